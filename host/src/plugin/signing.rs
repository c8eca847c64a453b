//! Host-side AWS Signature V4 for requests to targets granted with `[[http.sign]]`. The plugin
//! builds an unsigned request; the host reads the operator's credentials (its own `AWS_*`
//! environment or a profile of the shared credentials file) and signs it on the way out. The
//! credentials never enter a sandbox, and any `Authorization` or `X-Amz-*` header the plugin set
//! on a signed request is dropped first, so a plugin cannot pass off a signature of its own.

use std::path::PathBuf;
use std::time::SystemTime;

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;

use crate::grants::SignGrant;

/// Credentials as read from the host; `Debug` never shows the secret.
pub struct Credentials {
    key: String,
    secret: String,
    token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The shared credentials file: `AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`.
fn credentials_file() -> Option<PathBuf> {
    env("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".aws").join("credentials")))
}

/// Reads the credentials a grant names: a profile (of its file, when it names one) when it
/// names one, else the host's `AWS_*` environment, else `AWS_PROFILE` (or `default`) from the
/// shared credentials file.
pub fn credentials(grant: &SignGrant) -> Result<Credentials, String> {
    let profile = grant.profile.as_deref();
    if profile.is_none()
        && grant.credentials_file.is_none()
        && let (Some(key), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"))
    {
        return Ok(Credentials {
            key,
            secret,
            token: env("AWS_SESSION_TOKEN"),
        });
    }
    let profile = profile
        .map(str::to_string)
        .or_else(|| env("AWS_PROFILE"))
        .unwrap_or_else(|| "default".into());
    let path = grant
        .credentials_file
        .clone()
        .or_else(credentials_file)
        .ok_or("no home directory for ~/.aws/credentials")?;
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "no AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the host's environment, and {}: {e}",
            path.display()
        )
    })?;
    profile_from(&text, &profile).ok_or_else(|| {
        format!(
            "{}: no profile [{profile}] with aws_access_key_id and aws_secret_access_key",
            path.display()
        )
    })
}

/// The `[profile]` section of an INI credentials file.
fn profile_from(text: &str, profile: &str) -> Option<Credentials> {
    let mut in_section = false;
    let (mut key, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_section = name.trim() == profile;
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "aws_access_key_id" => key = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some(Credentials {
        key: key?,
        secret: secret?,
        token,
    })
}

/// The service and region of a request to `host` under `grant`.
pub fn scope(grant: &SignGrant, host: &str) -> Result<(String, String), String> {
    let labels: Vec<&str> = host.split('.').collect();
    let amazon = host.ends_with(".amazonaws.com");
    let service = match (&grant.service, amazon) {
        (Some(s), _) => s.clone(),
        (None, true) => labels[0].to_string(),
        (None, false) => return Err(format!("no service for {host}: set `service` in the grant")),
    };
    let region = match (&grant.region, amazon) {
        (Some(r), _) => r.clone(),
        // `ec2.amazonaws.com`: the global endpoint, signed for us-east-1.
        (None, true) if labels.len() == 3 => "us-east-1".into(),
        (None, true) => labels[1].to_string(),
        (None, false) => return Err(format!("no region for {host}: set `region` in the grant")),
    };
    Ok((service, region))
}

/// Headers a plugin may not set on a signed request.
fn reserved(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "authorization" || name.starts_with("x-amz-")
}

/// Signs `request` (whose body is `body`) for `grant`, replacing any signature-like headers.
pub fn sign_request<B>(
    request: &mut http::Request<B>,
    body: &[u8],
    grant: &SignGrant,
    host: &str,
) -> Result<(), String> {
    let (service, region) = scope(grant, host)?;
    let creds = credentials(grant)?;
    sign_with(request, body, creds, &service, &region)
}

fn sign_with<B>(
    request: &mut http::Request<B>,
    body: &[u8],
    creds: Credentials,
    service: &str,
    region: &str,
) -> Result<(), String> {
    let names: Vec<http::HeaderName> = request
        .headers()
        .keys()
        .filter(|k| reserved(k.as_str()))
        .cloned()
        .collect();
    for name in names {
        request.headers_mut().remove(name);
    }
    let identity = aws_credential_types::Credentials::new(
        creds.key,
        creds.secret,
        creds.token,
        None,
        "infrakit-host",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| format!("signing parameters: {e}"))?
        .into();
    let uri = request.uri().to_string();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let signable = SignableRequest::new(
        request.method().as_str(),
        &uri,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .map_err(|e| format!("request cannot be signed: {e}"))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| format!("signing: {e}"))?
        .into_parts();
    instructions.apply_to_request_http1x(request);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::HttpTarget;

    fn grant(target: &str) -> SignGrant {
        SignGrant {
            target: HttpTarget::parse(target).unwrap(),
            service: None,
            region: None,
            profile: None,
            credentials_file: None,
        }
    }

    #[test]
    fn service_and_region_come_from_the_host_or_the_grant() {
        let g = grant("https://*.amazonaws.com");
        assert_eq!(
            scope(&g, "ec2.eu-west-1.amazonaws.com").unwrap(),
            ("ec2".into(), "eu-west-1".into())
        );
        assert_eq!(
            scope(&g, "ec2.amazonaws.com").unwrap(),
            ("ec2".into(), "us-east-1".into())
        );
        let mut emulator = grant("http://127.0.0.1:5000");
        assert!(scope(&emulator, "127.0.0.1").is_err());
        emulator.service = Some("ec2".into());
        emulator.region = Some("us-west-2".into());
        assert_eq!(
            scope(&emulator, "127.0.0.1").unwrap(),
            ("ec2".into(), "us-west-2".into())
        );
    }

    #[test]
    fn profiles_are_read_from_the_credentials_file() {
        let text = "[default]\naws_access_key_id = AKD\naws_secret_access_key = sd\n\n# c\n[prod]\naws_access_key_id=AKP\naws_secret_access_key=sp\naws_session_token = tok\n";
        let p = profile_from(text, "prod").unwrap();
        assert_eq!(
            (p.key.as_str(), p.secret.as_str(), p.token.as_deref()),
            ("AKP", "sp", Some("tok"))
        );
        assert_eq!(profile_from(text, "default").unwrap().key, "AKD");
        assert!(profile_from(text, "none").is_none());
        assert!(!format!("{p:?}").contains("sp"), "Debug shows no secret");
    }

    #[test]
    fn a_grant_may_name_its_credentials_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(
            &file,
            "[ops]\naws_access_key_id = AKOPS\naws_secret_access_key = s\n",
        )
        .unwrap();
        let mut g = grant("https://*.amazonaws.com");
        g.credentials_file = Some(file.clone());
        assert!(
            credentials(&g).unwrap_err().contains("[default]"),
            "no default profile there"
        );
        g.profile = Some("ops".into());
        assert_eq!(credentials(&g).unwrap().key, "AKOPS");
        g.credentials_file = Some(dir.path().join("missing"));
        assert!(credentials(&g).unwrap_err().contains("missing"));
    }

    #[test]
    fn a_signature_replaces_the_plugins_own() {
        let creds = Credentials {
            key: "AKIDTEST".into(),
            secret: "secret".into(),
            token: None,
        };
        let mut req = http::Request::post("http://127.0.0.1:5000/")
            .header("host", "127.0.0.1:5000")
            .header("authorization", "forged")
            .header("x-amz-date", "19700101T000000Z")
            .body(())
            .unwrap();
        sign_with(
            &mut req,
            b"Action=DescribeInstances",
            creds,
            "ec2",
            "us-east-1",
        )
        .unwrap();
        let auth = req.headers()["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/")
                && auth.contains("/us-east-1/ec2/"),
            "{auth}"
        );
        assert_ne!(req.headers()["x-amz-date"], "19700101T000000Z");
        assert_eq!(req.headers().get_all("authorization").iter().count(), 1);
    }
}
