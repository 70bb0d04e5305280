//! Token ids of the Qwen2.5-VL table (SPEC §3).

/// `<|endoftext|>`
pub const ENDOFTEXT: u32 = 151_643;
/// `<|im_start|>`
pub const IM_START: u32 = 151_644;
/// `<|im_end|>`
pub const IM_END: u32 = 151_645;
/// `<|vision_start|>`
pub const VISION_START: u32 = 151_652;
/// `<|vision_end|>`
pub const VISION_END: u32 = 151_653;
/// `<|image_pad|>`
pub const IMAGE_PAD: u32 = 151_655;
/// `<|video_pad|>`
pub const VIDEO_PAD: u32 = 151_656;
/// `<tool_call>` (added, not special: survives `skip_special_tokens`).
pub const TOOL_CALL: u32 = 151_657;
/// `</tool_call>` (added, not special).
pub const TOOL_CALL_END: u32 = 151_658;
/// Highest real token id; generated ids above it (vocab padding rows) are dropped.
pub const MAX_REAL_ID: u32 = 151_664;

/// The text `<|vision_start|><|image_pad|><|vision_end|>` that stands for one image in a prompt.
pub const IMAGE_PLACEHOLDER: &str = "<|vision_start|><|image_pad|><|vision_end|>";

/// Post-processes the ids a model generated for one turn as the official rollout does: ids above
/// [`MAX_REAL_ID`] are dropped, and if no `<|im_end|>` remains the last id is replaced by it
/// (an empty turn becomes `[<|im_end|>]`).
///
/// ```
/// use visionthink_core::tokens::{finish_turn, IM_END};
/// assert_eq!(finish_turn(&[1, 2, 151_700, 3]), vec![1, 2, IM_END]);
/// assert_eq!(finish_turn(&[5, IM_END]), vec![5, IM_END]);
/// assert_eq!(finish_turn(&[]), vec![IM_END]);
/// ```
pub fn finish_turn(generated: &[u32]) -> Vec<u32> {
    let mut ids: Vec<u32> = generated
        .iter()
        .copied()
        .filter(|&t| t <= MAX_REAL_ID)
        .collect();
    if !ids.contains(&IM_END) {
        match ids.last_mut() {
            Some(last) => *last = IM_END,
            None => ids.push(IM_END),
        }
    }
    ids
}
