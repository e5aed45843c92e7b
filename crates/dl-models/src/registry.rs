//! Every model by name: build one from its kind and configuration, and rebuild the model
//! a parameter file was saved from, without the code that trained it.
//!
//! A saved file carries, in its safetensors metadata entry `dlfs`, the model's kind
//! (`"model": "ResNet"`) and configuration (`"config"`, JSON). [`load`] reads both,
//! builds that model and loads the parameters; the book's pickle (which carries neither)
//! loads as the book's DeepConvNet.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{
    BinaryConvNet, BinaryConvNetConfig, ConvStack, ConvStackConfig, DeepConvNet, DeepConvNetConfig, GoogLeNet,
    GoogLeNetConfig, ModelError, Network, ResNet, ResNetConfig, SimpleConvNet, SimpleConvNetConfig, Vgg, VggConfig,
};

/// The model kinds [`ModelConfig`] builds, as saved files name them.
pub const MODEL_KINDS: [&str; 7] = [
    "DeepConvNet",
    "SimpleConvNet",
    "Vgg",
    "ResNet",
    "GoogLeNet",
    "BinaryConvNet",
    "ConvStack",
];

/// A model's kind with its configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ModelConfig {
    /// The book's chapter 8 network.
    DeepConvNet(DeepConvNetConfig),
    /// The book's chapter 7 network.
    SimpleConvNet(SimpleConvNetConfig),
    /// VGG for small images.
    Vgg(VggConfig),
    /// The CIFAR ResNet.
    ResNet(ResNetConfig),
    /// A small GoogLeNet.
    GoogLeNet(GoogLeNetConfig),
    /// A binarized network.
    BinaryConvNet(BinaryConvNetConfig),
    /// A stack of unpadded convolutions without pooling.
    ConvStack(ConvStackConfig),
}

/// The largest number a configuration may hold: every size, count, stride and padding
/// a model takes is at most this (`MAX_SIZE`).
pub const MAX_CONFIG_NUMBER: u64 = crate::blocks::MAX_SIZE as u64;

/// The longest list a configuration may hold: every list of blocks, stages, widths or
/// channels a model takes is at most this long.
pub const MAX_CONFIG_LIST: usize = 64;

/// Refuses a number above [`MAX_CONFIG_NUMBER`] or a list longer than
/// [`MAX_CONFIG_LIST`] anywhere in `value`, naming where (`path`).
fn check_bounds(value: &serde_json::Value, path: &str) -> Result<(), String> {
    let at = |path: &str| {
        if path.is_empty() {
            "the configuration".to_string()
        } else {
            format!("`{path}`")
        }
    };
    match value {
        serde_json::Value::Number(n) if n.as_u64().is_some_and(|v| v > MAX_CONFIG_NUMBER) => Err(format!(
            "{} is {n}, more than any size a model takes ({MAX_CONFIG_NUMBER})",
            at(path)
        )),
        serde_json::Value::Array(items) if items.len() > MAX_CONFIG_LIST => Err(format!(
            "{} lists {} items, more than any list a model takes ({MAX_CONFIG_LIST})",
            at(path),
            items.len()
        )),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_bounds(v, &format!("{path}[{i}]"))),
        serde_json::Value::Object(fields) => fields.iter().try_for_each(|(name, v)| {
            let path = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            check_bounds(v, &path)
        }),
        _ => Ok(()),
    }
}

fn unknown(kind: &str) -> ModelError {
    ModelError::UnknownModel {
        kind: kind.into(),
        known: MODEL_KINDS.join(", "),
    }
}

impl ModelConfig {
    /// The default configuration of `kind` (one of [`MODEL_KINDS`]).
    pub fn default_for(kind: &str) -> Result<Self, ModelError> {
        Ok(match kind {
            "DeepConvNet" => Self::DeepConvNet(Default::default()),
            "SimpleConvNet" => Self::SimpleConvNet(Default::default()),
            "Vgg" => Self::Vgg(Default::default()),
            "ResNet" => Self::ResNet(Default::default()),
            "GoogLeNet" => Self::GoogLeNet(Default::default()),
            "BinaryConvNet" => Self::BinaryConvNet(Default::default()),
            "ConvStack" => Self::ConvStack(Default::default()),
            _ => return Err(unknown(kind)),
        })
    }

    /// The configuration of `kind` from its JSON (as saved in a file's metadata).
    ///
    /// A number larger than any size a model takes ([`MAX_CONFIG_NUMBER`]) or a list
    /// longer than any a model takes ([`MAX_CONFIG_LIST`]) is refused here, before
    /// anything counts with it: the bounds that building checks field by field hold
    /// already for the count of parameters a file is checked against.
    pub fn from_json(kind: &str, json: &str) -> Result<Self, ModelError> {
        fn parse<T: for<'de> Deserialize<'de>>(kind: &str, json: &str) -> Result<T, ModelError> {
            let config_error = |message: String| ModelError::Config {
                kind: kind.into(),
                message,
            };
            let value: serde_json::Value = serde_json::from_str(json).map_err(|e| config_error(e.to_string()))?;
            check_bounds(&value, "").map_err(config_error)?;
            serde_json::from_value(value).map_err(|e| config_error(e.to_string()))
        }
        Ok(match kind {
            "DeepConvNet" => Self::DeepConvNet(parse(kind, json)?),
            "SimpleConvNet" => Self::SimpleConvNet(parse(kind, json)?),
            "Vgg" => Self::Vgg(parse(kind, json)?),
            "ResNet" => Self::ResNet(parse(kind, json)?),
            "GoogLeNet" => Self::GoogLeNet(parse(kind, json)?),
            "BinaryConvNet" => Self::BinaryConvNet(parse(kind, json)?),
            "ConvStack" => Self::ConvStack(parse(kind, json)?),
            _ => return Err(unknown(kind)),
        })
    }

    /// The kind, as [`Network::kind`] gives it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::DeepConvNet(_) => "DeepConvNet",
            Self::SimpleConvNet(_) => "SimpleConvNet",
            Self::Vgg(_) => "Vgg",
            Self::ResNet(_) => "ResNet",
            Self::GoogLeNet(_) => "GoogLeNet",
            Self::BinaryConvNet(_) => "BinaryConvNet",
            Self::ConvStack(_) => "ConvStack",
        }
    }

    /// The configuration as JSON, as a saved file's metadata holds it.
    pub fn to_json(&self) -> String {
        match self {
            Self::DeepConvNet(c) => serde_json::to_string(c),
            Self::SimpleConvNet(c) => serde_json::to_string(c),
            Self::Vgg(c) => serde_json::to_string(c),
            Self::ResNet(c) => serde_json::to_string(c),
            Self::GoogLeNet(c) => serde_json::to_string(c),
            Self::BinaryConvNet(c) => serde_json::to_string(c),
            Self::ConvStack(c) => serde_json::to_string(c),
        }
        .expect("serialisable config")
    }

    /// The same model with `classes` outputs: a new head, for another task.
    pub fn with_output_size(&self, classes: usize) -> Result<Self, ModelError> {
        let mut value: serde_json::Value = serde_json::from_str(&self.to_json()).expect("JSON of a config");
        value["output_size"] = classes.into();
        Self::from_json(self.kind(), &value.to_string())
    }

    /// The same model with some fields of its configuration replaced: `overrides` is a
    /// JSON object of fields the configuration has (`{"dropout_ratio": 0.0}`), each
    /// replacing that field whole. A field the configuration does not have is an error.
    pub fn with_overrides(&self, overrides: &str) -> Result<Self, ModelError> {
        let config_error = |message: String| ModelError::Config {
            kind: self.kind().into(),
            message,
        };
        let mut value: serde_json::Value = serde_json::from_str(&self.to_json()).expect("JSON of a config");
        let fields = value.as_object_mut().expect("a config is a JSON object");
        let changes: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(overrides).map_err(|e| config_error(format!("overrides: {e}")))?;
        for (name, new) in changes {
            match fields.get_mut(&name) {
                Some(field) => *field = new,
                None => {
                    let known: Vec<&str> = fields.keys().map(String::as_str).collect();
                    return Err(config_error(format!(
                        "no field `{name}` (the fields are {})",
                        known.join(", ")
                    )));
                }
            }
        }
        Self::from_json(self.kind(), &value.to_string())
    }

    /// The names of the parameters that depend on the number of classes: the classifier
    /// head that [`ModelConfig::with_output_size`] replaces. Found by building the model
    /// for one class more and comparing the shapes.
    pub fn head_names(&self) -> Result<Vec<String>, ModelError> {
        let value: serde_json::Value = serde_json::from_str(&self.to_json()).expect("JSON of a config");
        let classes = value["output_size"].as_u64().unwrap_or(0) as usize;
        let shapes = |net: &Network| -> std::collections::BTreeMap<String, Vec<usize>> {
            net.params().into_iter().map(|(n, t)| (n, t.shape().to_vec())).collect()
        };
        let (a, b) = (
            shapes(&self.build(0)?),
            shapes(&self.with_output_size(classes + 1)?.build(0)?),
        );
        Ok(a.into_iter()
            .filter(|(n, s)| b.get(n) != Some(s))
            .map(|(n, _)| n)
            .collect())
    }

    /// The parameters the model has, counted without building it.
    pub fn param_count(&self) -> u128 {
        match self {
            Self::DeepConvNet(c) => c.param_count(),
            Self::SimpleConvNet(c) => c.param_count(),
            Self::Vgg(c) => c.param_count(),
            Self::ResNet(c) => c.param_count(),
            Self::GoogLeNet(c) => c.param_count(),
            Self::BinaryConvNet(c) => c.param_count(),
            Self::ConvStack(c) => c.param_count(),
        }
    }

    /// Builds the model, every random part fixed by `seed`.
    pub fn build(&self, seed: u64) -> Result<Network, ModelError> {
        Ok(match self.clone() {
            Self::DeepConvNet(c) => DeepConvNet::try_new(c, seed)?.into_network(),
            Self::SimpleConvNet(c) => SimpleConvNet::try_new(c, seed)?.into_network(),
            Self::Vgg(c) => Vgg::try_new(c, seed)?.into_network(),
            Self::ResNet(c) => ResNet::try_new(c, seed)?.into_network(),
            Self::GoogLeNet(c) => GoogLeNet::try_new(c, seed)?.into_network(),
            Self::BinaryConvNet(c) => BinaryConvNet::try_new(c, seed)?.into_network(),
            Self::ConvStack(c) => ConvStack::try_new(c, seed)?.into_network(),
        })
    }
}

/// Builds `kind` with its configuration in JSON, or its default one.
pub fn build(kind: &str, config: Option<&str>, seed: u64) -> Result<Network, ModelError> {
    match config {
        Some(json) => ModelConfig::from_json(kind, json)?,
        None => ModelConfig::default_for(kind)?,
    }
    .build(seed)
}

/// The model a saved parameter file belongs to, from its metadata (the header only is
/// read).
pub fn read_model_config(path: impl AsRef<Path>) -> Result<ModelConfig, ModelError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    model_config_from_bytes(&bytes, path)
}

/// [`read_model_config`] of a file's bytes in memory; `path` only names it in errors.
pub fn model_config_from_bytes(bytes: &[u8], path: &Path) -> Result<ModelConfig, ModelError> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| ModelError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let no_model = |message: &str| ModelError::NoModel {
        path: path.to_path_buf(),
        message: message.into(),
    };
    let entry = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("dlfs"))
        .ok_or_else(|| no_model("no \"dlfs\" entry"))?;
    let info: std::collections::BTreeMap<String, String> = serde_json::from_str(entry)
        .map_err(|e| no_model(&format!("the \"dlfs\" entry is not a map of strings: {e}")))?;
    let kind = info.get("model").ok_or_else(|| no_model("no \"model\""))?;
    match info.get("config") {
        Some(json) => ModelConfig::from_json(kind, json),
        None => ModelConfig::default_for(kind),
    }
}

/// Whether `bytes` start as a safetensors file does: an 8-byte little-endian header
/// length that fits the file, then the header's `{`. (Its first byte alone says
/// nothing: a header of 0x..80 bytes starts with the pickle protocol byte.)
fn looks_like_safetensors(bytes: &[u8]) -> bool {
    match (bytes.get(..8), bytes.get(8)) {
        (Some(len), Some(b'{')) => {
            let n = u64::from_le_bytes(len.try_into().expect("8 bytes"));
            n <= (bytes.len() - 8) as u64
        }
        _ => false,
    }
}

/// Rebuilds the model a parameter file was saved from and loads its parameters: a
/// safetensors file by its metadata, the book's pickle (a file starting with the pickle
/// protocol byte that is not a safetensors file) as the book's DeepConvNet, read without
/// running any of it.
pub fn load(path: impl AsRef<Path>) -> Result<Network, ModelError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.first() == Some(&0x80) && !looks_like_safetensors(&bytes) {
        let mut net = DeepConvNet::new(DeepConvNetConfig::default(), 0).into_network();
        net.load_book_params(path)?;
        return Ok(net);
    }
    load_from_bytes(&bytes, path)
}

/// Rebuilds the model of a safetensors file in memory and loads its parameters; `path`
/// only names the file in errors.
///
/// The model is built only when the file is large enough to hold its parameters at 16
/// bits (the narrowest a file stores), so a file of `n` bytes never makes this allocate
/// parameters of more than `2n` bytes.
pub fn load_from_bytes(bytes: &[u8], path: &Path) -> Result<Network, ModelError> {
    let config = model_config_from_bytes(bytes, path)?;
    let needed = config.param_count().saturating_mul(2);
    if needed > bytes.len() as u128 {
        return Err(ModelError::Format {
            path: path.to_path_buf(),
            message: format!(
                "its {} asks for {} parameters ({needed} bytes), more than the file's {} bytes hold",
                config.kind(),
                config.param_count(),
                bytes.len()
            ),
        });
    }
    let mut net = config.build(0)?;
    net.load_params_from_bytes(bytes, path)?;
    Ok(net)
}
