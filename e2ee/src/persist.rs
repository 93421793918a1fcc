//! A small binary encoding for persisting client state (the key store file): fixed-width
//! big-endian integers and u32-length-prefixed byte strings. The encoded state holds private
//! keys, so buffers are zeroized on drop; the file itself is for the caller to protect.

use zeroize::Zeroizing;

/// Why persisted state could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt key store: {0}")]
pub struct PersistError(pub &'static str);

/// Writes state.
#[derive(Default)]
pub struct Enc(pub(crate) Zeroizing<Vec<u8>>);

impl Enc {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(v);
    }
    pub(crate) fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    pub(crate) fn key(&mut self, v: &[u8; 32]) {
        self.0.extend_from_slice(v);
    }
    pub(crate) fn opt_key(&mut self, v: Option<&[u8; 32]>) {
        match v {
            Some(k) => {
                self.u8(1);
                self.key(k);
            }
            None => self.u8(0),
        }
    }
    pub(crate) fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
}

/// Reads state.
pub struct Dec<'a>(pub(crate) &'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PersistError> {
        if self.0.len() < n {
            return Err(PersistError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, PersistError> {
        Ok(u8::from_be_bytes(self.array()?))
    }
    pub(crate) fn u16(&mut self) -> Result<u16, PersistError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, PersistError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, PersistError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], PersistError> {
        self.take(N)?.try_into().map_err(|_| PersistError("length"))
    }
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], PersistError> {
        let n = usize::try_from(self.u32()?).map_err(|_| PersistError("length"))?;
        self.take(n)
    }
    pub(crate) fn str(&mut self) -> Result<String, PersistError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| PersistError("not UTF-8"))
    }
    pub(crate) fn key(&mut self) -> Result<[u8; 32], PersistError> {
        self.array()
    }
    pub(crate) fn opt_key(&mut self) -> Result<Option<[u8; 32]>, PersistError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.key()?)),
            _ => Err(PersistError("option tag")),
        }
    }
    pub(crate) fn len(&mut self) -> Result<usize, PersistError> {
        let n = usize::try_from(self.u32()?).map_err(|_| PersistError("length"))?;
        // Every element takes at least one byte: a count beyond the rest is corrupt.
        if n > self.0.len() {
            return Err(PersistError("count"));
        }
        Ok(n)
    }
    pub(crate) fn end(&self) -> Result<(), PersistError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(PersistError("trailing bytes"))
        }
    }
}
