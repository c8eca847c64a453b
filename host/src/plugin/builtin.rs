//! The built-in plugins, compiled from `plugins/` by the build script and embedded in the
//! binary, so that one file is a complete deployment.

/// `(name, component bytes)` of every built-in plugin.
pub const BUILTINS: &[(&str, &[u8])] = &[
    (
        "instance-file",
        include_bytes!(concat!(env!("INFRAKIT_GUEST_DIR"), "/instance_file.wasm")),
    ),
    (
        "flavor-vanilla",
        include_bytes!(concat!(env!("INFRAKIT_GUEST_DIR"), "/flavor_vanilla.wasm")),
    ),
    (
        "instance-docker",
        include_bytes!(concat!(env!("INFRAKIT_GUEST_DIR"), "/instance_docker.wasm")),
    ),
    (
        "flavor-http",
        include_bytes!(concat!(env!("INFRAKIT_GUEST_DIR"), "/flavor_http.wasm")),
    ),
    (
        "instance-aws",
        include_bytes!(concat!(env!("INFRAKIT_GUEST_DIR"), "/instance_aws.wasm")),
    ),
    (
        "instance-process",
        include_bytes!(concat!(
            env!("INFRAKIT_GUEST_DIR"),
            "/instance_process.wasm"
        )),
    ),
    (
        "flavor-zookeeper",
        include_bytes!(concat!(
            env!("INFRAKIT_GUEST_DIR"),
            "/flavor_zookeeper.wasm"
        )),
    ),
];
