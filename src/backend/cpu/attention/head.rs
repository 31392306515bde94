//! What one unit of attention work reads: the geometry of a KV head's query group, and
//! that KV head's cached positions of one sequence in the paged cache (`kv_cache.rs`
//! has the layout).

pub struct HeadGeometry {
    pub head_dim: usize,
    /// Query heads per KV head.
    pub group: usize,
    pub scale: f32,
}

/// One KV head's cached positions `0..len` of one sequence: a layer's K and V arrays,
/// and the start of the KV head's region in each block that holds them. Position `p`
/// lives in region `regions[p / block_size]` at index `p % block_size`: its V row at
/// `region + index * head_dim`, its K value `x` at `region + x * block_size + index`.
pub struct PagedRows<'a, T> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub regions: &'a [usize],
    pub block_size: usize,
    pub len: usize,
}

impl<T> PagedRows<'_, T> {
    /// The bounds the kernels' unchecked reads rely on.
    ///
    /// # Panics
    /// If the regions do not cover `len` positions or one lies outside `k` or `v`.
    pub fn check(&self, head_dim: usize) {
        let size = self.block_size * head_dim;
        assert!(self.block_size > 0, "blocks of no positions");
        assert!(self.regions.len() * self.block_size >= self.len, "regions do not cover the positions");
        let end = self.regions.iter().map(|&r| r + size).max().unwrap_or(0);
        assert!(self.k.len() >= end && self.v.len() >= end, "a KV region is outside the cache");
    }

    /// Region and index of position `p`.
    #[inline(always)]
    pub fn place(&self, p: usize) -> (usize, usize) {
        (self.regions[p / self.block_size], p % self.block_size)
    }
}
