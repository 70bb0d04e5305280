//! How the WebGPU executor stores 2-D weights: one enum, parsed from its name at every boundary
//! (the CLI's `--weights`, the wasm load options, the TypeScript `weights` option). Available
//! without the `wgpu` feature, so callers can carry the choice on any build.

/// How a 2-D weight is stored on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WeightStorage {
    /// f32 values.
    #[default]
    F32,
    /// f16 values, two per u32 (round to nearest even), unpacked to f32 in the kernels.
    F16,
    /// int8 values, four per u32, with a per-row absmax f32 scale (binding 5).
    Int8,
}

impl WeightStorage {
    /// Parses `f32`, `f16` or `int8` (the CLI, the wasm options and the TypeScript API all
    /// pass this string).
    ///
    /// ```
    /// use visionthink_model::WeightStorage;
    /// assert_eq!(WeightStorage::parse("int8").unwrap(), WeightStorage::Int8);
    /// assert!(WeightStorage::parse("q4").unwrap_err().to_string().contains("f32, f16 or int8"));
    /// ```
    pub fn parse(s: &str) -> crate::error::Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "int8" => Ok(Self::Int8),
            other => Err(crate::error::Error::Config(format!(
                "weight storage {other:?} is not one of f32, f16 or int8"
            ))),
        }
    }

    /// The storage the older boolean options ask for: `int8` wins over `f16`.
    ///
    /// ```
    /// use visionthink_model::WeightStorage;
    /// assert_eq!(WeightStorage::from_flags(true, true), WeightStorage::Int8);
    /// assert_eq!(WeightStorage::from_flags(false, false), WeightStorage::F32);
    /// ```
    pub fn from_flags(int8: bool, f16: bool) -> Self {
        match (int8, f16) {
            (true, _) => Self::Int8,
            (false, true) => Self::F16,
            (false, false) => Self::F32,
        }
    }

    /// The name [`Self::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Int8 => "int8",
        }
    }

    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
            Self::Int8 => 1,
        }
    }
}
