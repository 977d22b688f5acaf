//! Kernel registry paths (\REGISTRY\MACHINE\..., \REGISTRY\USER\<SID>\...)
//! to the HKLM/HKU form that rules and output use, and back.

use crate::nt_path::strip_prefix_ci;

/// Map a kernel key path to HKLM\... / HKU\...; None if it is not absolute.
pub fn kernel_to_hive(kernel_path: &str) -> Option<String> {
    let trimmed = kernel_path.trim_end_matches('\\');
    for (prefix, hive) in [(r"\REGISTRY\MACHINE", "HKLM"), (r"\REGISTRY\USER", "HKU")] {
        if let Some(rest) = strip_prefix_ci(trimmed, prefix)
            && (rest.is_empty() || rest.starts_with('\\'))
        {
            return Some(format!("{hive}{rest}"));
        }
    }
    if strip_prefix_ci(trimmed, r"\REGISTRY\A\").is_some() {
        // Application hives (private, loaded by RegLoadAppKey): keep as is.
        return Some(trimmed.to_string());
    }
    None
}

/// Canonicalise a user-written key path: long hive names to short, `\`
/// separators, no trailing separator. HKCU is expanded by the caller (it
/// depends on the user SID), see [`expand_current_user`].
pub fn canonical_hive_path(path: &str) -> String {
    let path = path.replace('/', "\\");
    let path = path.trim_end_matches('\\');
    for (long, short) in [
        ("HKEY_LOCAL_MACHINE", "HKLM"),
        ("HKEY_USERS", "HKU"),
        ("HKEY_CURRENT_USER", "HKCU"),
        ("HKEY_CLASSES_ROOT", r"HKLM\SOFTWARE\Classes"),
        ("HKCR", r"HKLM\SOFTWARE\Classes"),
    ] {
        if let Some(rest) = strip_prefix_ci(path, long)
            && (rest.is_empty() || rest.starts_with('\\'))
        {
            return format!("{short}{rest}");
        }
    }
    path.to_string()
}

/// HKCU\x -> HKU\<sid>\x, since the kernel only ever reports HKU paths.
pub fn expand_current_user(path: &str, user_sid: Option<&str>) -> String {
    match (strip_prefix_ci(path, "HKCU"), user_sid) {
        (Some(rest), Some(sid)) if rest.is_empty() || rest.starts_with('\\') => {
            format!(r"HKU\{sid}{rest}")
        }
        _ => path.to_string(),
    }
}

/// HKLM\SYSTEM\ControlSet001\x -> HKLM\SYSTEM\CurrentControlSet\x when
/// `current` ("ControlSet001") is the set CurrentControlSet links to.
pub fn alias_control_set(path: &str, current: &str) -> String {
    let real = format!(r"HKLM\SYSTEM\{current}");
    match strip_prefix_ci(path, &real) {
        Some(rest) if rest.is_empty() || rest.starts_with('\\') => {
            format!(r"HKLM\SYSTEM\CurrentControlSet{rest}")
        }
        _ => path.to_string(),
    }
}

/// Join a parent key path and a relative name.
pub fn join(parent: &str, relative: &str) -> String {
    let relative = relative.trim_start_matches('\\');
    if relative.is_empty() {
        parent.to_string()
    } else {
        format!("{}\\{relative}", parent.trim_end_matches('\\'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_machine_and_user_hives() {
        assert_eq!(
            kernel_to_hive(r"\REGISTRY\MACHINE\SOFTWARE\Microsoft\Windows\CurrentVersion\Run")
                .as_deref(),
            Some(r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Run")
        );
        assert_eq!(
            kernel_to_hive(r"\Registry\User\S-1-5-21-1-2-3-1001\Software\x\").as_deref(),
            Some(r"HKU\S-1-5-21-1-2-3-1001\Software\x")
        );
        assert_eq!(
            kernel_to_hive(r"\REGISTRY\MACHINE").as_deref(),
            Some("HKLM")
        );
        assert_eq!(kernel_to_hive(r"\REGISTRY\MACHINEX\a"), None);
        assert_eq!(kernel_to_hive(r"SOFTWARE\x"), None);
    }

    #[test]
    fn canonicalises_user_written_paths() {
        assert_eq!(
            canonical_hive_path(r"HKEY_LOCAL_MACHINE\SOFTWARE\x\"),
            r"HKLM\SOFTWARE\x"
        );
        assert_eq!(canonical_hive_path("HKCU/Software/y"), r"HKCU\Software\y");
        assert_eq!(
            expand_current_user(r"HKCU\Software\y", Some("S-1-5-18")),
            r"HKU\S-1-5-18\Software\y"
        );
        assert_eq!(
            expand_current_user(r"HKCUX\a", Some("S-1-5-18")),
            r"HKCUX\a"
        );
    }

    #[test]
    fn aliases_the_current_control_set_only() {
        assert_eq!(
            alias_control_set(r"HKLM\SYSTEM\ControlSet001\Services\x", "ControlSet001"),
            r"HKLM\SYSTEM\CurrentControlSet\Services\x"
        );
        assert_eq!(
            alias_control_set(r"HKLM\SYSTEM\ControlSet002\Services", "ControlSet001"),
            r"HKLM\SYSTEM\ControlSet002\Services"
        );
        assert_eq!(
            alias_control_set(r"HKLM\SYSTEM\ControlSet0010", "ControlSet001"),
            r"HKLM\SYSTEM\ControlSet0010"
        );
    }

    #[test]
    fn joins_relative_names() {
        assert_eq!(join(r"HKLM\A\", r"\B\C"), r"HKLM\A\B\C");
        assert_eq!(join(r"HKLM\A", ""), r"HKLM\A");
    }
}
