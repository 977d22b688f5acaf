//! The container a process runs in, from its cgroup path.

/// The container id in /proc/PID/cgroup's text (docker, containerd/CRI, CRI-O, podman),
/// `None` for a process outside any recognised container.
pub fn container_id(cgroup: &str) -> Option<String> {
    for line in cgroup.lines() {
        // "hierarchy-id:controllers:path"
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        for part in path.rsplit('/') {
            let part = part.strip_suffix(".scope").unwrap_or(part);
            let id = [
                "docker-",
                "cri-containerd-",
                "crio-",
                "libpod-",
                "containerd-",
            ]
            .iter()
            .find_map(|prefix| part.strip_prefix(prefix))
            .unwrap_or(part);
            if is_container_id(id) {
                return Some(id.to_string());
            }
        }
    }
    None
}

/// Container runtimes name cgroups after 64 hex digits.
fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c3c6e0a9b2d7e8f00112233445566778899aabbccddeeff00112233445566";

    #[test]
    fn runtimes() {
        let cases = [
            format!("0::/system.slice/docker-{ID}.scope"),
            format!("12:memory:/docker/{ID}"),
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{ID}.scope"
            ),
            format!("0::/kubepods/besteffort/pod12/{ID}"),
            format!("0::/machine.slice/libpod-{ID}.scope/container"),
            format!("0::/kubepods.slice/crio-{ID}.scope"),
        ];
        for case in &cases {
            assert_eq!(container_id(case).as_deref(), Some(ID), "{case}");
        }
    }

    #[test]
    fn host_processes_have_none() {
        assert_eq!(
            container_id("0::/user.slice/user-1000.slice/session-2.scope"),
            None
        );
        assert_eq!(container_id("0::/init.scope"), None);
        assert_eq!(container_id(""), None);
        // 64 characters but not hex.
        assert_eq!(
            container_id(&format!("0::/docker/{}", "z".repeat(64))),
            None
        );
    }
}
