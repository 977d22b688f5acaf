//! The configuration file the Debian package installs (`dist/fim.toml`, a conffile) is valid
//! and means exactly the built-in configuration: the same settings and the same rules, so
//! installing the package changes nothing about what fim watches.

use std::path::Path;

use fim::config::Config;

#[test]
fn the_packaged_configuration_is_the_builtin_one_written_out() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/fim.toml");
    let packaged = Config::load(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
    let builtin = Config::builtin();
    assert_eq!(packaged.state_dir, builtin.state_dir);
    assert_eq!(packaged.output, builtin.output);
    assert_eq!(packaged.metrics_address, builtin.metrics_address);
    assert_eq!(
        format!("{:?}", packaged.hashing),
        format!("{:?}", builtin.hashing)
    );
    assert_eq!(
        format!("{:?}", packaged.store),
        format!("{:?}", builtin.store)
    );
    assert_eq!(packaged.ring_buffer_bytes, builtin.ring_buffer_bytes);
    assert_eq!(
        format!("{:?}", packaged.authorized),
        format!("{:?}", builtin.authorized)
    );
    assert_eq!(packaged.excluded, builtin.excluded);
    let rules =
        |c: &Config| -> Vec<String> { c.rules.rules().iter().map(|r| format!("{r:?}")).collect() };
    assert_eq!(rules(&packaged), rules(&builtin));
}
