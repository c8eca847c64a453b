//! `infrakit plugin new`: a plugin project that builds, tests and loads as generated.
//!
//! The templates under `scaffold/` are ordinary files with `{{placeholders}}`; they are
//! compiled and tested as they are generated (`tests/plugin_cli.rs`), so they cannot rot.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::plugin::PluginKind;

/// Where the project's SDK comes from.
#[derive(Debug, Clone)]
pub enum SdkSource {
    /// A checkout's `sdk/` directory.
    Path(PathBuf),
    /// The published crate.
    Version(&'static str),
}

impl SdkSource {
    /// The checkout this binary was built from, when it is still there; else crates.io.
    pub fn default_for_this_build() -> SdkSource {
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk");
        if sdk.join("Cargo.toml").is_file() {
            SdkSource::Path(sdk)
        } else {
            SdkSource::Version(env!("CARGO_PKG_VERSION"))
        }
    }

    fn dependency(&self) -> String {
        match self {
            SdkSource::Path(p) => format!("path = {:?}", p.display().to_string()),
            SdkSource::Version(v) => format!("version = \"{v}\""),
        }
    }
}

/// What was written.
#[derive(Debug)]
pub struct Generated {
    /// The project directory.
    pub dir: PathBuf,
    /// The files, relative to it.
    pub files: Vec<PathBuf>,
    /// Where the built component will be.
    pub artifact: PathBuf,
}

/// The language of a generated project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// A Rust crate on `infrakit-sdk`.
    Rust,
    /// A Python module on `infrakit_plugin` (`sdk/python`), built with componentize-py.
    Python,
}

/// Writes a new `kind` plugin project called `name` in `lang` into `dir`, which must not
/// exist yet or be empty (nothing is overwritten).
pub fn generate(
    name: &str,
    kind: PluginKind,
    lang: Lang,
    dir: &Path,
    sdk: &SdkSource,
) -> anyhow::Result<Generated> {
    if !crate::plugin::registry::valid_name(name) {
        anyhow::bail!(
            "{name:?} is not a plugin name: lowercase letters, digits and `-`, starting with a \
             letter, at most 64 characters"
        );
    }
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        anyhow::bail!(
            "{} already exists and is not empty; nothing was written",
            dir.display()
        );
    }
    if lang == Lang::Python {
        return generate_python(name, kind, dir, sdk);
    }
    let crate_name = name.replace('-', "_");
    let (source, kind_word, description, try_it) = match kind {
        PluginKind::Instance => (
            include_str!("scaffold/instance.rs.tmpl"),
            "instance",
            "An infrakit instance plugin",
            INSTANCE_TRY,
        ),
        PluginKind::Flavor => (
            include_str!("scaffold/flavor.rs.tmpl"),
            "flavor",
            "An infrakit flavor plugin",
            FLAVOR_TRY,
        ),
    };
    let fill = |template: &str| {
        template
            .replace("{{try}}", try_it)
            .replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
            .replace("{{kind}}", kind_word)
            .replace("{{description}}", description)
            .replace("{{sdk}}", &sdk.dependency())
    };
    let files = [
        (
            "Cargo.toml".to_string(),
            fill(include_str!("scaffold/Cargo.toml.tmpl")),
        ),
        ("src/lib.rs".to_string(), fill(source)),
        (
            format!("{name}.toml"),
            fill(include_str!("scaffold/grants.toml.tmpl")),
        ),
        (
            "README.md".to_string(),
            fill(include_str!("scaffold/README.md.tmpl")),
        ),
        (
            ".gitignore".to_string(),
            include_str!("scaffold/gitignore.tmpl").to_string(),
        ),
    ];
    Ok(Generated {
        dir: dir.to_path_buf(),
        files: write_all(dir, &files)?,
        artifact: dir
            .join("target/wasm32-wasip2/release")
            .join(format!("{crate_name}.wasm")),
    })
}

fn write_all(dir: &Path, files: &[(String, String)]) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (rel, text) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(PathBuf::from(rel));
    }
    Ok(written)
}

/// A Python project: the app module, its pytest suite, a copy of the WIT it is built against.
/// It needs a checkout: the Python SDK is not published.
fn generate_python(
    name: &str,
    kind: PluginKind,
    dir: &Path,
    sdk: &SdkSource,
) -> anyhow::Result<Generated> {
    let SdkSource::Path(rust_sdk) = sdk else {
        anyhow::bail!(
            "a Python plugin needs an infrakit checkout (its sdk/python and wit/): give --sdk \
             CHECKOUT/sdk"
        );
    };
    let sdk_python = rust_sdk.join("python");
    let wit = rust_sdk.parent().map(|p| p.join("wit")).unwrap_or_default();
    anyhow::ensure!(
        sdk_python.join("infrakit_plugin").is_dir() && wit.is_dir(),
        "{}: no Python SDK (python/infrakit_plugin) or no ../wit beside it",
        rust_sdk.display()
    );
    let (app, test, kind_word) = match kind {
        PluginKind::Instance => (
            include_str!("scaffold/python/instance.py.tmpl"),
            include_str!("scaffold/python/test_instance.py.tmpl"),
            "instance",
        ),
        PluginKind::Flavor => (
            include_str!("scaffold/python/flavor.py.tmpl"),
            include_str!("scaffold/python/test_flavor.py.tmpl"),
            "flavor",
        ),
    };
    let sdk_python = sdk_python.display().to_string();
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{kind}}", kind_word)
            .replace("{{sdk_python}}", &sdk_python)
    };
    let mut files = vec![
        ("app.py".to_string(), fill(app)),
        ("test_app.py".to_string(), fill(test)),
        (
            "conftest.py".to_string(),
            fill(include_str!("scaffold/python/conftest.py.tmpl")),
        ),
        (
            "pyproject.toml".to_string(),
            fill(include_str!("scaffold/python/pyproject.toml.tmpl")),
        ),
        (
            format!("{name}.toml"),
            fill(include_str!("scaffold/grants.toml.tmpl")),
        ),
        (
            "README.md".to_string(),
            fill(include_str!("scaffold/python/README.md.tmpl")),
        ),
        (
            ".gitignore".to_string(),
            "*.wasm\n__pycache__/\n.pytest_cache/\n".to_string(),
        ),
    ];
    for entry in walkdir(&wit)? {
        let rel = entry.strip_prefix(&wit).expect("under wit");
        let text = std::fs::read_to_string(&entry)
            .with_context(|| format!("cannot read {}", entry.display()))?;
        files.push((Path::new("wit").join(rel).display().to_string(), text));
    }
    Ok(Generated {
        dir: dir.to_path_buf(),
        files: write_all(dir, &files)?,
        artifact: dir.join(format!("{name}.wasm")),
    })
}

/// The `.wit` files under `dir`, recursively.
fn walkdir(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walkdir(&path)?);
        } else if path.extension().is_some_and(|e| e == "wit") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

const INSTANCE_TRY: &str = "```sh
echo '{\"Properties\": {\"Note\": \"hi\"}, \"Tags\": {\"infrakit.group\": \"demo\"}}' > spec.json
infrakit instance provision --plugin {{name}} spec.json      # prints the new id
infrakit instance describe --plugin {{name}} --tag infrakit.group=demo
```

Then name it in a group: `\"Instance\": {\"Plugin\": \"{{name}}\", \"Properties\": {\"Note\": \"hi\"}}`.";

const FLAVOR_TRY: &str = "```sh
echo '{\"Init\": [\"systemctl start app\"], \"Tags\": {\"role\": \"web\"}}' > props.json
infrakit flavor validate --plugin {{name}} props.json --size 3
echo '{\"Init\": \"echo boot\"}' | infrakit flavor prepare --plugin {{name}} --properties props.json --group demo --index 0 -
```

Then name it in a group: `\"Flavor\": {\"Plugin\": \"{{name}}\", \"Properties\": {\"Tags\": {\"role\": \"web\"}}}`.";
