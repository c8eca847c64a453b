//! `instance-aws`: EC2 instances through the EC2 Query API.
//!
//! The plugin builds unsigned requests; the host signs them (AWS Signature V4) with the
//! operator's credentials for the targets the grant lists under `[[http.sign]]`, so no key ever
//! enters the sandbox. The region is the `region` config value (the plugin's endpoint is
//! `https://ec2.REGION.amazonaws.com`), or the `endpoint` config value points it at an emulator.
//!
//! - **provision** = `RunInstances` (one instance): the properties after InfraKit's AWS plugin
//!   (`RunInstancesInput` fields, flat or nested as InfraKit wrote them), the flavor's init as
//!   `UserData` (base64), identity tags as EC2 tags at launch (`TagSpecifications`);
//! - **describe** = `DescribeInstances` by `tag:` filters, excluding shutting-down and terminated
//!   instances, a page at a time (`NextToken`);
//! - **destroy** = `TerminateInstances` (`InvalidInstanceID.NotFound` is `not-found`);
//! - **label** = `CreateTags`.
//!
//! Throttling and 5xx answers are `transient` (the host retries with back-off); bad parameters
//! are `invalid` with AWS's code and message.

use std::collections::BTreeMap;

use base64::Engine as _;
use infrakit_sdk::http::{self, HttpError};
use infrakit_sdk::{
    Capability, Description, DestroyContext, Error, InstancePlugin, InstanceSpec, Properties,
    Result, Tags,
};
use serde::Deserialize;
use serde_json::{Value, json};

/// The EC2 API version spoken.
pub const API_VERSION: &str = "2016-11-15";
/// Tag holding a pet's logical id.
pub const LOGICAL_ID_TAG: &str = "infrakit-aws.logical-id";
/// States listed by `describe`: not shutting-down or terminated.
const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];

/// `RunInstancesInput` fields.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct RunInput {
    /// The AMI.
    pub image_id: String,
    /// e.g. `t3.micro`.
    pub instance_type: String,
    /// An EC2 key pair's name.
    #[serde(default)]
    pub key_name: Option<String>,
    /// The subnet.
    #[serde(default)]
    pub subnet_id: Option<String>,
    /// Security group ids.
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    /// The instance profile, by name or ARN.
    #[serde(default)]
    pub iam_instance_profile: Option<InstanceProfile>,
    /// Volumes.
    #[serde(default)]
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    /// Where to place it.
    #[serde(default)]
    pub placement: Option<Placement>,
    /// EBS-optimised.
    #[serde(default)]
    pub ebs_optimized: Option<bool>,
    /// Detailed monitoring.
    #[serde(default)]
    pub monitoring: Option<Monitoring>,
}

/// `IamInstanceProfile`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct InstanceProfile {
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
    /// Its ARN.
    #[serde(default)]
    pub arn: Option<String>,
}

/// One `BlockDeviceMappings` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct BlockDeviceMapping {
    /// e.g. `/dev/xvda`.
    pub device_name: String,
    /// The EBS volume.
    #[serde(default)]
    pub ebs: Option<Ebs>,
}

/// An EBS volume.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Ebs {
    /// GiB.
    #[serde(default)]
    pub volume_size: Option<u32>,
    /// `gp3`, `io2`...
    #[serde(default)]
    pub volume_type: Option<String>,
    /// Deleted with the instance.
    #[serde(default)]
    pub delete_on_termination: Option<bool>,
    /// Encrypted.
    #[serde(default)]
    pub encrypted: Option<bool>,
    /// Provisioned IOPS.
    #[serde(default)]
    pub iops: Option<u32>,
}

/// `Placement`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Placement {
    /// e.g. `eu-west-1a`.
    pub availability_zone: String,
}

/// `Monitoring`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Monitoring {
    /// Detailed monitoring on.
    pub enabled: bool,
}

/// InfraKit's form: `{"RunInstancesInput": {...}, "Tags": {...}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct Nested {
    run_instances_input: RunInput,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    region: Option<String>,
}

/// The flat form: the `RunInstancesInput` fields with `Region` and `Tags` beside them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct Flat {
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    image_id: String,
    instance_type: String,
    #[serde(default)]
    key_name: Option<String>,
    #[serde(default)]
    subnet_id: Option<String>,
    #[serde(default)]
    security_group_ids: Vec<String>,
    #[serde(default)]
    iam_instance_profile: Option<InstanceProfile>,
    #[serde(default)]
    block_device_mappings: Vec<BlockDeviceMapping>,
    #[serde(default)]
    placement: Option<Placement>,
    #[serde(default)]
    ebs_optimized: Option<bool>,
    #[serde(default)]
    monitoring: Option<Monitoring>,
}

/// Instance properties, from either form.
#[derive(Debug)]
pub struct AwsProperties {
    /// The region the spec expects (must be the plugin's).
    pub region: Option<String>,
    /// Extra EC2 tags (identity tags win over them).
    pub tags: BTreeMap<String, String>,
    /// What to launch.
    pub run: RunInput,
}

impl AwsProperties {
    fn parse(properties: &Properties) -> Result<Self> {
        let nested = serde_json::from_str::<Value>(properties.as_str())
            .ok()
            .is_some_and(|v| v.get("RunInstancesInput").is_some());
        let props = if nested {
            let n: Nested = properties.parse()?;
            AwsProperties {
                region: n.region,
                tags: n.tags,
                run: n.run_instances_input,
            }
        } else {
            let f: Flat = properties.parse()?;
            AwsProperties {
                region: f.region,
                tags: f.tags,
                run: RunInput {
                    image_id: f.image_id,
                    instance_type: f.instance_type,
                    key_name: f.key_name,
                    subnet_id: f.subnet_id,
                    security_group_ids: f.security_group_ids,
                    iam_instance_profile: f.iam_instance_profile,
                    block_device_mappings: f.block_device_mappings,
                    placement: f.placement,
                    ebs_optimized: f.ebs_optimized,
                    monitoring: f.monitoring,
                },
            }
        };
        let at = if nested { "RunInstancesInput." } else { "" };
        if !props.run.image_id.starts_with("ami-") {
            return Err(Error::invalid(format!(
                "properties at `{at}ImageId`: {:?} is not an AMI id (ami-...)",
                props.run.image_id
            )));
        }
        if props.run.instance_type.trim().is_empty() {
            return Err(Error::invalid(format!(
                "properties at `{at}InstanceType`: empty"
            )));
        }
        Ok(props)
    }

    /// The `RunInstances` parameters.
    fn params(&self, spec: &InstanceSpec) -> Vec<(String, String)> {
        let r = &self.run;
        let mut p: Vec<(String, String)> = vec![
            ("ImageId".into(), r.image_id.clone()),
            ("InstanceType".into(), r.instance_type.clone()),
            ("MinCount".into(), "1".into()),
            ("MaxCount".into(), "1".into()),
        ];
        let mut put = |k: String, v: String| p.push((k, v));
        if let Some(k) = &r.key_name {
            put("KeyName".into(), k.clone());
        }
        if let Some(s) = &r.subnet_id {
            put("SubnetId".into(), s.clone());
        }
        for (i, g) in r.security_group_ids.iter().enumerate() {
            put(format!("SecurityGroupId.{}", i + 1), g.clone());
        }
        if let Some(profile) = &r.iam_instance_profile {
            if let Some(n) = &profile.name {
                put("IamInstanceProfile.Name".into(), n.clone());
            }
            if let Some(a) = &profile.arn {
                put("IamInstanceProfile.Arn".into(), a.clone());
            }
        }
        for (i, b) in r.block_device_mappings.iter().enumerate() {
            let at = format!("BlockDeviceMapping.{}", i + 1);
            put(format!("{at}.DeviceName"), b.device_name.clone());
            if let Some(e) = &b.ebs {
                if let Some(v) = e.volume_size {
                    put(format!("{at}.Ebs.VolumeSize"), v.to_string());
                }
                if let Some(v) = &e.volume_type {
                    put(format!("{at}.Ebs.VolumeType"), v.clone());
                }
                if let Some(v) = e.delete_on_termination {
                    put(format!("{at}.Ebs.DeleteOnTermination"), v.to_string());
                }
                if let Some(v) = e.encrypted {
                    put(format!("{at}.Ebs.Encrypted"), v.to_string());
                }
                if let Some(v) = e.iops {
                    put(format!("{at}.Ebs.Iops"), v.to_string());
                }
            }
        }
        if let Some(pl) = &r.placement {
            put(
                "Placement.AvailabilityZone".into(),
                pl.availability_zone.clone(),
            );
        }
        if let Some(e) = r.ebs_optimized {
            put("EbsOptimized".into(), e.to_string());
        }
        if let Some(m) = &r.monitoring {
            put("Monitoring.Enabled".into(), m.enabled.to_string());
        }
        if !spec.init.is_empty() {
            put(
                "UserData".into(),
                base64::engine::general_purpose::STANDARD.encode(&spec.init),
            );
        }
        let mut tags = self.tags.clone();
        for (k, v) in &spec.tags {
            tags.insert(k.clone(), v.clone());
        }
        if let Some(id) = &spec.logical_id {
            tags.insert(LOGICAL_ID_TAG.into(), id.clone());
        }
        if !tags.is_empty() {
            put("TagSpecification.1.ResourceType".into(), "instance".into());
            for (i, (k, v)) in tags.into_iter().enumerate() {
                put(format!("TagSpecification.1.Tag.{}.Key", i + 1), k);
                put(format!("TagSpecification.1.Tag.{}.Value", i + 1), v);
            }
        }
        p
    }
}

/// What EC2 answered with, as the error kind the host acts on.
fn ec2_error(action: &str, status: u16, body: &str) -> Error {
    let (code, message) = roxmltree::Document::parse(body)
        .ok()
        .and_then(|doc| {
            let error = doc
                .descendants()
                .find(|n| n.has_tag_name("Error") || n.tag_name().name() == "Error")?;
            Some((
                text(error, "Code")?,
                text(error, "Message").unwrap_or_default(),
            ))
        })
        .unwrap_or_else(|| (format!("HTTP {status}"), body.chars().take(200).collect()));
    let what = format!("{action}: {code}: {message}");
    match code.as_str() {
        "InvalidInstanceID.NotFound" => Error::NotFound(what),
        "RequestLimitExceeded"
        | "Throttling"
        | "ThrottlingException"
        | "RequestThrottled"
        | "InternalError"
        | "InternalFailure"
        | "ServiceUnavailable"
        | "Unavailable"
        | "InsufficientInstanceCapacity" => Error::Transient(what),
        "AuthFailure"
        | "UnauthorizedOperation"
        | "SignatureDoesNotMatch"
        | "InvalidClientTokenId"
        | "OptInRequired"
        | "IncompleteSignature" => Error::other(format!(
            "{what} (the host signs with the grant's credentials)"
        )),
        _ if status >= 500 || status == 429 => Error::Transient(what),
        _ => Error::Invalid(what),
    }
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children().find(|c| c.tag_name().name() == name)
}

fn text(node: roxmltree::Node, name: &str) -> Option<String> {
    child(node, name).and_then(|c| c.text()).map(str::to_string)
}

fn items<'a, 'i>(node: roxmltree::Node<'a, 'i>, set: &str) -> Vec<roxmltree::Node<'a, 'i>> {
    child(node, set)
        .map(|s| {
            s.children()
                .filter(|c| c.tag_name().name() == "item")
                .collect()
        })
        .unwrap_or_default()
}

/// One page of `DescribeInstances`: the instances and the next token.
fn parse_page(body: &str) -> Result<(Vec<Description>, Option<String>)> {
    let doc = roxmltree::Document::parse(body)
        .map_err(|e| Error::other(format!("DescribeInstances: the answer is not XML: {e}")))?;
    let root = doc.root_element();
    let mut found = Vec::new();
    for reservation in items(root, "reservationSet") {
        for i in items(reservation, "instancesSet") {
            let Some(id) = text(i, "instanceId") else {
                continue;
            };
            let state = child(i, "instanceState")
                .and_then(|s| text(s, "name"))
                .unwrap_or_default();
            let mut tags: BTreeMap<String, String> = items(i, "tagSet")
                .into_iter()
                .filter_map(|t| Some((text(t, "key")?, text(t, "value").unwrap_or_default())))
                .collect();
            let logical_id = tags.remove(LOGICAL_ID_TAG);
            let properties = json!({
                "State": state,
                "InstanceType": text(i, "instanceType"),
                "ImageId": text(i, "imageId"),
                "PrivateIpAddress": text(i, "privateIpAddress"),
                "PublicIpAddress": text(i, "ipAddress"),
                "LaunchTime": text(i, "launchTime"),
            });
            found.push(Description {
                id,
                logical_id,
                tags: tags.into_iter().collect(),
                properties: Some(Properties::new(properties.to_string())),
            });
        }
    }
    let next = text(root, "nextToken").filter(|t| !t.is_empty());
    Ok((found, next))
}

/// The plugin: where EC2 is and how large a page is.
#[derive(Debug)]
pub struct AwsPlugin {
    endpoint: Option<String>,
    region: Option<String>,
    page_size: u32,
}

impl Default for AwsPlugin {
    fn default() -> Self {
        AwsPlugin {
            endpoint: infrakit_sdk::config("endpoint"),
            region: infrakit_sdk::config("region"),
            page_size: infrakit_sdk::config("page_size")
                .and_then(|p| p.parse().ok())
                .unwrap_or(100),
        }
    }
}

fn instance_id(id: &str) -> Result<&str> {
    let ok = id.len() > 2
        && id.len() <= 64
        && id.starts_with("i-")
        && id[2..].bytes().all(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(id)
    } else {
        Err(Error::invalid(format!(
            "{id:?} is not an EC2 instance id (i-...)"
        )))
    }
}

impl AwsPlugin {
    /// A plugin for `region`, at `endpoint` when given (an emulator), listing `page_size` at a time.
    pub fn new(endpoint: Option<String>, region: Option<String>, page_size: u32) -> Self {
        AwsPlugin {
            endpoint,
            region,
            page_size,
        }
    }

    /// The properties, parsed and checked against this plugin's region.
    fn properties(&self, properties: &Properties) -> Result<AwsProperties> {
        let props = AwsProperties::parse(properties)?;
        if let (Some(wanted), Some(mine)) = (&props.region, &self.region)
            && wanted != mine
        {
            return Err(Error::invalid(format!(
                "properties at `Region`: {wanted:?}, but this plugin manages {mine:?} (its \
                 `region` config value); install a copy of the plugin under another name for \
                 {wanted:?}"
            )));
        }
        Ok(props)
    }

    fn endpoint(&self) -> Result<String> {
        match (&self.endpoint, &self.region) {
            (Some(e), _) => Ok(e.trim_end_matches('/').to_string()),
            (None, Some(r)) => Ok(format!("https://ec2.{r}.amazonaws.com")),
            (None, None) => Err(Error::invalid(
                "no region: grant instance-aws a `region` config value (or an `endpoint`)",
            )),
        }
    }

    /// One EC2 Query API call; the answer's XML text.
    fn call(&self, action: &str, params: &[(String, String)]) -> Result<String> {
        let mut body = format!("Action={action}&Version={API_VERSION}");
        for (k, v) in params {
            body.push('&');
            body.push_str(&http::encode(k));
            body.push('=');
            body.push_str(&http::encode(v));
        }
        let response = http::post(format!("{}/", self.endpoint()?))
            .header("content-type", "application/x-www-form-urlencoded; charset=utf-8")
            .body(body)
            .timeout(std::time::Duration::from_secs(20))
            .send()
            .map_err(|e| match e {
                HttpError::Denied { url } => Error::other(format!(
                    "{action}: the host refused {url} (HttpRequestDenied): grant it in [http] allow \
                     and [[http.sign]]"
                )),
                other => Error::from(other),
            })?;
        let text = response.text();
        if (200..300).contains(&response.status) {
            Ok(text)
        } else {
            Err(ec2_error(action, response.status, &text))
        }
    }
}

impl InstancePlugin for AwsPlugin {
    fn capabilities(&self) -> Vec<Capability> {
        vec![
            Capability::Http("https://*.amazonaws.com".into()),
            Capability::Config("region".into()),
            Capability::Config("endpoint".into()),
            Capability::Config("page_size".into()),
        ]
    }

    fn validate(&self, properties: &Properties) -> Result<()> {
        self.properties(properties).map(|_| ())
    }

    fn provision(&self, spec: InstanceSpec) -> Result<String> {
        let props = self.properties(&spec.properties)?;
        let xml = self.call("RunInstances", &props.params(&spec))?;
        let doc = roxmltree::Document::parse(&xml)
            .map_err(|e| Error::other(format!("RunInstances: the answer is not XML: {e}")))?;
        items(doc.root_element(), "instancesSet")
            .first()
            .and_then(|i| text(*i, "instanceId"))
            .ok_or_else(|| Error::other("RunInstances: no instanceId in the answer"))
    }

    fn label(&self, id: &str, labels: Tags) -> Result<()> {
        let mut params = vec![("ResourceId.1".to_string(), instance_id(id)?.to_string())];
        for (i, (k, v)) in labels.into_iter().enumerate() {
            params.push((format!("Tag.{}.Key", i + 1), k));
            params.push((format!("Tag.{}.Value", i + 1), v));
        }
        self.call("CreateTags", &params).map(|_| ())
    }

    fn destroy(&self, id: &str, context: DestroyContext) -> Result<()> {
        infrakit_sdk::debug!("terminating {id} ({context:?})");
        let params = [("InstanceId.1".to_string(), instance_id(id)?.to_string())];
        self.call("TerminateInstances", &params).map(|_| ())
    }

    fn describe(&self, tags: &Tags, _include_properties: bool) -> Result<Vec<Description>> {
        let mut params: Vec<(String, String)> = Vec::new();
        for (i, (k, v)) in tags.iter().enumerate() {
            params.push((format!("Filter.{}.Name", i + 1), format!("tag:{k}")));
            params.push((format!("Filter.{}.Value.1", i + 1), v.clone()));
        }
        let n = tags.len() + 1;
        params.push((format!("Filter.{n}.Name"), "instance-state-name".into()));
        for (i, s) in LIVE_STATES.iter().enumerate() {
            params.push((format!("Filter.{n}.Value.{}", i + 1), (*s).into()));
        }
        params.push((
            "MaxResults".into(),
            self.page_size.clamp(5, 1000).to_string(),
        ));
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut page_params = params.clone();
            if let Some(t) = &token {
                page_params.push(("NextToken".into(), t.clone()));
            }
            let (page, next) = parse_page(&self.call("DescribeInstances", &page_params)?)?;
            found.extend(page.into_iter().filter(|d| d.matches(tags)));
            match next {
                Some(t) if Some(&t) != token.as_ref() => token = Some(t),
                _ => break,
            }
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found.dedup_by(|a, b| a.id == b.id);
        Ok(found)
    }
}

infrakit_sdk::export_instance!(AwsPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use infrakit_sdk::http::Response;
    use infrakit_sdk::testing::Host;

    fn spec(props: Value) -> InstanceSpec {
        InstanceSpec {
            properties: Properties::new(props.to_string()),
            tags: vec![("infrakit.group".into(), "web".into())],
            init: "#!/bin/sh\necho hi".into(),
            logical_id: Some("web1".into()),
            attachments: vec![],
        }
    }

    #[test]
    fn both_property_forms_parse_and_errors_name_the_field() {
        let p = AwsPlugin::new(None, Some("eu-west-1".into()), 100);
        let flat =
            json!({"ImageId": "ami-1", "InstanceType": "t3.micro", "SecurityGroupIds": ["sg-1"]});
        assert!(p.validate(&Properties::new(flat.to_string())).is_ok());
        let nested = json!({"RunInstancesInput": {"ImageId": "ami-1", "InstanceType": "t3.micro"}, "Tags": {"a": "b"}});
        assert!(p.validate(&Properties::new(nested.to_string())).is_ok());
        for (props, field) in [
            (
                json!({"ImageId": "ami-1", "InstanceType": 42}),
                "InstanceType",
            ),
            (
                json!({"ImageId": "nope", "InstanceType": "t3.micro"}),
                "ImageId",
            ),
            (
                json!({"RunInstancesInput": {"ImageId": "ami-1", "InstanceType": "t3.micro", "Bogus": 1}}),
                "Bogus",
            ),
            (
                json!({"ImageId": "ami-1", "InstanceType": "t3.micro", "Region": "us-east-1"}),
                "Region",
            ),
        ] {
            let err = p
                .validate(&Properties::new(props.to_string()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{props}: {err}");
        }
    }

    #[test]
    fn run_parameters_carry_user_data_and_tags() {
        let s = spec(
            json!({"ImageId": "ami-1", "InstanceType": "t3.micro", "SecurityGroupIds": ["sg-1", "sg-2"],
            "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 20}}]}),
        );
        let params = AwsProperties::parse(&s.properties).unwrap().params(&s);
        let get = |k: &str| {
            params
                .iter()
                .find(|(pk, _)| pk == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("SecurityGroupId.2").as_deref(), Some("sg-2"));
        assert_eq!(
            get("BlockDeviceMapping.1.Ebs.VolumeSize").as_deref(),
            Some("20")
        );
        let user_data = base64::engine::general_purpose::STANDARD
            .decode(get("UserData").unwrap())
            .unwrap();
        assert_eq!(user_data, b"#!/bin/sh\necho hi");
        let tag_keys: Vec<String> = params
            .iter()
            .filter(|(k, _)| k.ends_with(".Key"))
            .map(|(_, v)| v.clone())
            .collect();
        assert!(
            tag_keys.contains(&"infrakit.group".to_string())
                && tag_keys.contains(&LOGICAL_ID_TAG.to_string())
        );
    }

    #[test]
    fn errors_map_to_what_the_host_acts_on() {
        let xml = |code: &str| {
            format!(
                "<Response><Errors><Error><Code>{code}</Code><Message>m</Message></Error></Errors></Response>"
            )
        };
        assert!(matches!(
            ec2_error("X", 400, &xml("InvalidInstanceID.NotFound")),
            Error::NotFound(_)
        ));
        assert!(matches!(
            ec2_error("X", 503, &xml("RequestLimitExceeded")),
            Error::Transient(_)
        ));
        assert!(
            matches!(ec2_error("X", 400, &xml("InvalidParameterValue")), Error::Invalid(m) if m.contains("InvalidParameterValue"))
        );
        assert!(matches!(
            ec2_error("X", 401, &xml("AuthFailure")),
            Error::Other(_)
        ));
        assert!(matches!(
            ec2_error("X", 502, "<html>bad gateway</html>"),
            Error::Transient(_)
        ));
    }

    #[test]
    fn describe_follows_next_tokens() {
        let host = Host::new().with_http(|req| {
            let body = String::from_utf8_lossy(&req.body).to_string();
            let (id, next) = if body.contains("NextToken=t1") { ("i-2", "") } else { ("i-1", "<nextToken>t1</nextToken>") };
            let xml = format!(
                "<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><reservationSet><item><instancesSet><item>\
                 <instanceId>{id}</instanceId><instanceState><name>running</name></instanceState>\
                 <tagSet><item><key>infrakit.group</key><value>web</value></item><item><key>{LOGICAL_ID_TAG}</key><value>w1</value></item></tagSet>\
                 </item></instancesSet></item></reservationSet>{next}</DescribeInstancesResponse>"
            );
            Ok(Response { status: 200, headers: vec![], body: xml.into_bytes() })
        });
        let _g = host.install();
        let p = AwsPlugin::new(Some("http://127.0.0.1:1".into()), None, 5);
        let found = p
            .describe(&vec![("infrakit.group".into(), "web".into())], false)
            .unwrap();
        let ids: Vec<&str> = found.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["i-1", "i-2"]);
        assert_eq!(found[0].logical_id.as_deref(), Some("w1"));
        assert!(found[0].tag(LOGICAL_ID_TAG).is_none());
    }
}
