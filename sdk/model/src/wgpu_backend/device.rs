//! The adapter and device, and the capture of device faults: uncaptured errors (validation,
//! out-of-memory, internal) and device loss are recorded in a sticky slot that every later
//! operation checks, so a fault becomes a typed [`Error`] instead of a panic or a hang.

use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};

/// Adapter facts worth reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterInfo {
    /// Adapter name.
    pub name: String,
    /// Backend (Vulkan, Metal, BrowserWebGpu…).
    pub backend: String,
    /// `maxStorageBufferBindingSize` in bytes.
    pub max_binding: u64,
    /// `maxBufferSize` in bytes.
    pub max_buffer: u64,
    /// Whether `shader-f16` is available.
    pub shader_f16: bool,
    /// A CPU implementation (lavapipe, SwiftShader, WARP): barriers are expensive there, so
    /// matrix-vector products use the barrier-light kernel.
    pub software: bool,
    /// `minUniformBufferOffsetAlignment` in bytes (the stride of the parameter pool).
    pub uniform_align: u32,
    /// `maxUniformBufferBindingSize` in bytes.
    pub max_uniform_binding: u64,
    /// `maxTextureDimension2D` in texels.
    pub max_texture_2d: u32,
}

/// The first device fault since creation.
#[derive(Clone, Default)]
pub struct Fault(Arc<Mutex<Option<Error>>>);

impl Fault {
    /// Records `e` unless a fault is already recorded.
    pub fn set(&self, e: Error) {
        if let Ok(mut slot) = self.0.lock() {
            slot.get_or_insert(e);
        }
    }

    /// The recorded fault as an error (sticky: a faulted backend must be rebuilt).
    pub fn check(&self) -> Result<()> {
        let slot = self
            .0
            .lock()
            .map_err(|_| Error::Backend("fault slot poisoned".into()))?;
        match slot.as_ref() {
            None => Ok(()),
            Some(Error::DeviceLost(m)) => Err(Error::DeviceLost(m.clone())),
            Some(Error::OutOfMemory(m)) => Err(Error::OutOfMemory(m.clone())),
            Some(e) => Err(Error::Backend(e.to_string())),
        }
    }
}

/// Requests an adapter and a device with the adapter's limits (native: Vulkan/Metal/DX12 per
/// `WGPU_BACKEND`; browsers: `navigator.gpu`), and installs the fault handlers. Errors name
/// what is missing.
pub async fn open(
    force_fallback_adapter: bool,
) -> Result<(wgpu::Device, wgpu::Queue, AdapterInfo, Fault)> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter,
            compatible_surface: None,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::NoAdapter(e.to_string()))?;
    let limits = adapter.limits();
    let ai = adapter.get_info();
    let info = AdapterInfo {
        name: ai.name.clone(),
        backend: format!("{:?}", ai.backend),
        max_binding: limits.max_storage_buffer_binding_size as u64,
        max_buffer: limits.max_buffer_size,
        shader_f16: adapter.features().contains(wgpu::Features::SHADER_F16),
        software: ai.device_type == wgpu::DeviceType::Cpu || {
            let n = ai.name.to_lowercase();
            ["llvmpipe", "lavapipe", "swiftshader", "warp"]
                .iter()
                .any(|s| n.contains(s))
        },
        uniform_align: limits.min_uniform_buffer_offset_alignment.max(1),
        max_uniform_binding: limits.max_uniform_buffer_binding_size,
        max_texture_2d: limits.max_texture_dimension_2d,
    };
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: Some("visionthink"),
            // `shader-f16` when there is one, for the f16 matmul (WgpuOptions::f16_math).
            required_features: if info.shader_f16 {
                wgpu::Features::SHADER_F16
            } else {
                wgpu::Features::empty()
            },
            required_limits: limits,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::NoAdapter(format!("device request failed: {e}")))?;
    let fault = Fault::default();
    let f = fault.clone();
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
        f.set(match &e {
            wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory(e.to_string()),
            _ => Error::Backend(e.to_string()),
        });
    }));
    let f = fault.clone();
    device.set_device_lost_callback(move |reason, msg| {
        f.set(Error::DeviceLost(format!("{reason:?}: {msg}")));
    });
    Ok((device, queue, info, fault))
}
