//! The decoded image type every image function takes and returns.

use crate::error::{Error, Result};

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}

impl RgbImage {
    /// A 0×0 image with no buffer: the starting point of the `*_into` functions' outputs.
    ///
    /// ```
    /// let img = visionthink_core::image::RgbImage::empty();
    /// assert_eq!((img.width, img.height, img.data.len()), (0, 0, 0));
    /// ```
    pub fn empty() -> Self {
        Self {
            width: 0,
            height: 0,
            data: Vec::new(),
        }
    }

    /// Wraps a buffer, checking that its length is `width * height * 3`.
    ///
    /// ```
    /// use visionthink_core::image::RgbImage;
    /// let img = RgbImage::new(2, 1, vec![255, 0, 0, 0, 255, 0]).unwrap();
    /// assert_eq!(img.pixel(1, 0), [0, 255, 0]);
    /// assert!(RgbImage::new(2, 2, vec![0; 3]).is_err());
    /// ```
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Result<Self> {
        let expected = width as usize * height as usize * 3;
        if data.len() != expected {
            return Err(Error::PixelBuffer {
                width,
                height,
                expected,
                got: data.len(),
            });
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// The RGB value at `(x, y)`. Panics if out of bounds (internal use and examples).
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}
