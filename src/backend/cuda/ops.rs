//! The backend's own operations: writing a step's K/V rows into the pool by
//! slot, and decode attention read straight from the pool through block tables.
//! Each is a candle custom op with a CUDA kernel (`kernels.cu`, bf16) and a CPU
//! twin of the same contract (f32 or bf16), so the tests run the op's packing,
//! layouts and arithmetic here; only the kernels' own code needs a GPU.

use candle_core::{CpuStorage, CustomOp3, InplaceOp3, Layout, Shape, Tensor, WithDType};

type Result<T> = candle_core::Result<T>;

/// The contiguous element range of a tensor, or an error naming the op.
fn contiguous(l: &Layout, op: &str) -> Result<(usize, usize)> {
    l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("{op}: operand must be contiguous")))
}

/// `pool[head, slots[t], :] = rows[t, head, :]` for every row `t` and KV head:
/// applied in place to a `[kv_heads, pool_slots, head_dim]` pool with
/// `pool.inplace_op3(&rows, &slots, &WriteKv)`. `rows` is `[rows, kv_heads *
/// head_dim]` with any row stride (the V columns of the fused QKV output);
/// `slots` is `[rows]` u32.
pub struct WriteKv;

impl WriteKv {
    fn shape(pool: &Layout, rows: &Layout) -> Result<(usize, usize, usize, usize)> {
        let (heads, pool_slots, dim) = pool.shape().dims3()?;
        let (n, width) = rows.shape().dims2()?;
        if width != heads * dim || rows.stride()[1] != 1 {
            candle_core::bail!("write-kv: rows {:?} do not match pool {:?}", rows.shape(), pool.shape());
        }
        Ok((n, heads, dim, pool_slots))
    }
}

fn write_rows<T: Copy>(
    pool: &mut [T],
    rows: &[T],
    row_stride: usize,
    slots: &[u32],
    (heads, dim, pool_slots): (usize, usize, usize),
) {
    for (t, &slot) in slots.iter().enumerate() {
        for h in 0..heads {
            let dst = (h * pool_slots + slot as usize) * dim;
            let src = t * row_stride + h * dim;
            pool[dst..dst + dim].copy_from_slice(&rows[src..src + dim]);
        }
    }
}

impl InplaceOp3 for WriteKv {
    fn name(&self) -> &'static str {
        "write-kv"
    }

    fn cpu_fwd(
        &self,
        pool: &mut CpuStorage,
        pool_l: &Layout,
        rows: &CpuStorage,
        rows_l: &Layout,
        slots: &CpuStorage,
        slots_l: &Layout,
    ) -> Result<()> {
        let (n, heads, dim, pool_slots) = Self::shape(pool_l, rows_l)?;
        let (p0, _) = contiguous(pool_l, "write-kv")?;
        let (s0, s1) = contiguous(slots_l, "write-kv")?;
        let CpuStorage::U32(slots) = slots else { candle_core::bail!("write-kv: slots must be u32") };
        let slots = &slots[s0..s1];
        if slots.len() != n || slots.iter().any(|&s| s as usize >= pool_slots) {
            candle_core::bail!("write-kv: {} slots for {n} rows, or a slot beyond {pool_slots}", slots.len());
        }
        let (r0, stride) = (rows_l.start_offset(), rows_l.stride()[0]);
        let geometry = (heads, dim, pool_slots);
        match (pool, rows) {
            (CpuStorage::F32(p), CpuStorage::F32(r)) => {
                write_rows(&mut p[p0..], &r[r0..], stride, slots, geometry)
            }
            (CpuStorage::BF16(p), CpuStorage::BF16(r)) => {
                write_rows(&mut p[p0..], &r[r0..], stride, slots, geometry)
            }
            _ => candle_core::bail!("write-kv: pool and rows must both be f32 or both bf16"),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        pool: &mut candle_core::CudaStorage,
        pool_l: &Layout,
        rows: &candle_core::CudaStorage,
        rows_l: &Layout,
        slots: &candle_core::CudaStorage,
        slots_l: &Layout,
    ) -> Result<()> {
        use candle_core::cuda::cudarc::driver::{LaunchConfig, PushKernelArg};
        let (n, heads, dim, pool_slots) = Self::shape(pool_l, rows_l)?;
        let (p0, _) = contiguous(pool_l, "write-kv")?;
        let (s0, _) = contiguous(slots_l, "write-kv")?;
        let dev = pool.device.clone();
        let rows_view = rows.as_cuda_slice::<half::bf16>()?.slice(rows_l.start_offset()..);
        let slots_view = slots.as_cuda_slice::<u32>()?.slice(s0..);
        let mut pool_view = pool.as_cuda_slice_mut::<half::bf16>()?.slice_mut(p0..);
        let func = dev.get_or_load_custom_func("write_kv_bf16", kernels::MODULE, kernels::PTX)?;
        let (num_rows, kv_heads, head_dim) = (n as u32, heads as u32, dim as u32);
        let (row_stride, slots_total) = (rows_l.stride()[0] as u64, pool_slots as u64);
        let mut b = func.builder();
        b.arg(&mut pool_view);
        b.arg(&rows_view);
        b.arg(&slots_view);
        b.arg(&num_rows);
        b.arg(&kv_heads);
        b.arg(&head_dim);
        b.arg(&row_stride);
        b.arg(&slots_total);
        let cfg = LaunchConfig::for_num_elems((n * heads * dim) as u32);
        // SAFETY: the arguments match the kernel's signature in kernels.cu; every
        // slot was checked against the pool by the step's validation.
        unsafe { b.launch(cfg) }.map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
        Ok(())
    }
}

/// Decode attention over the paged pool: query row `i` (`[seqs, heads, head_dim]`)
/// attends to the first `lens[i]` positions of its sequence, found through
/// `tables[i]`; applied as `q.apply_op3_no_bwd(&k_pool, &v_pool, &op)`, giving
/// `[seqs, heads, head_dim]`.
pub struct PagedDecodeAttention {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub scale: f32,
    /// `[seqs, max_blocks]` block tables, padded with block 0; on the host for the
    /// CPU twin and on the device for the kernel.
    pub tables: Vec<u32>,
    pub max_blocks: usize,
    pub lens: Vec<u32>,
    pub device_tables: Tensor,
    pub device_lens: Tensor,
}

impl PagedDecodeAttention {
    fn check(&self, q: &Layout, k: &Layout) -> Result<(usize, usize)> {
        let (seqs, heads, dim) = q.shape().dims3()?;
        let (kv_heads, pool_slots, kdim) = k.shape().dims3()?;
        if heads != self.num_heads || dim != self.head_dim || kv_heads != self.num_kv_heads || kdim != dim {
            candle_core::bail!(
                "paged-attention: q {:?} and pool {:?} disagree with the model",
                q.shape(),
                k.shape()
            );
        }
        if self.lens.len() != seqs || self.tables.len() != seqs * self.max_blocks {
            candle_core::bail!("paged-attention: {} lengths for {seqs} queries", self.lens.len());
        }
        Ok((seqs, pool_slots))
    }

    fn attend_cpu<T: WithDType>(&self, q: &[T], k: &[T], v: &[T], pool_slots: usize) -> Vec<T> {
        let (h, d, group) = (self.num_heads, self.head_dim, self.num_heads / self.num_kv_heads);
        let mut out = vec![T::zero(); q.len()];
        let mut scores = Vec::new();
        for (s, &len) in self.lens.iter().enumerate() {
            let table = &self.tables[s * self.max_blocks..(s + 1) * self.max_blocks];
            let slot =
                |pos: usize| table[pos / self.block_size] as usize * self.block_size + pos % self.block_size;
            for head in 0..h {
                let kv = head / group;
                let qh = &q[(s * h + head) * d..(s * h + head + 1) * d];
                scores.clear();
                for pos in 0..len as usize {
                    let kr = &k[(kv * pool_slots + slot(pos)) * d..][..d];
                    let dot: f64 = qh.iter().zip(kr).map(|(a, b)| a.to_f64() * b.to_f64()).sum();
                    scores.push(dot * self.scale as f64);
                }
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = scores.iter().map(|x| (x - max).exp()).sum();
                let oh = &mut out[(s * h + head) * d..(s * h + head + 1) * d];
                for (i, o) in oh.iter_mut().enumerate() {
                    let mut acc = 0.0;
                    for (pos, x) in scores.iter().enumerate() {
                        acc += (x - max).exp() * v[(kv * pool_slots + slot(pos)) * d + i].to_f64();
                    }
                    *o = T::from_f64(acc / total);
                }
            }
        }
        out
    }
}

impl CustomOp3 for PagedDecodeAttention {
    fn name(&self) -> &'static str {
        "paged-decode-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_l: &Layout,
        k: &CpuStorage,
        k_l: &Layout,
        v: &CpuStorage,
        v_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, pool_slots) = self.check(q_l, k_l)?;
        let (q0, q1) = contiguous(q_l, "paged-attention")?;
        let (k0, k1) = contiguous(k_l, "paged-attention")?;
        let (v0, v1) = contiguous(v_l, "paged-attention")?;
        let out = match (q, k, v) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                CpuStorage::F32(self.attend_cpu(&q[q0..q1], &k[k0..k1], &v[v0..v1], pool_slots))
            }
            (CpuStorage::BF16(q), CpuStorage::BF16(k), CpuStorage::BF16(v)) => {
                CpuStorage::BF16(self.attend_cpu(&q[q0..q1], &k[k0..k1], &v[v0..v1], pool_slots))
            }
            _ => candle_core::bail!("paged-attention: q, k and v must share one dtype (f32 or bf16)"),
        };
        Ok((out, q_l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        q_l: &Layout,
        k: &candle_core::CudaStorage,
        k_l: &Layout,
        v: &candle_core::CudaStorage,
        v_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::Storage;
        let (seqs, pool_slots) = self.check(q_l, k_l)?;
        let (q0, _) = contiguous(q_l, "paged-attention")?;
        let (k0, _) = contiguous(k_l, "paged-attention")?;
        let (v0, _) = contiguous(v_l, "paged-attention")?;
        let dev = q.device.clone();
        let q_view = q.as_cuda_slice::<half::bf16>()?.slice(q0..);
        let k_view = k.as_cuda_slice::<half::bf16>()?.slice(k0..);
        let v_view = v.as_cuda_slice::<half::bf16>()?.slice(v0..);
        let (tables, tables_l) = self.device_tables.storage_and_layout();
        let (lens, lens_l) = self.device_lens.storage_and_layout();
        let (Storage::Cuda(tables), Storage::Cuda(lens)) = (&*tables, &*lens) else {
            candle_core::bail!("paged-attention: block tables must be on the GPU");
        };
        let tables_view = tables.as_cuda_slice::<u32>()?.slice(contiguous(tables_l, "paged-attention")?.0..);
        let lens_view = lens.as_cuda_slice::<u32>()?.slice(contiguous(lens_l, "paged-attention")?.0..);
        let n = seqs * self.num_heads * self.head_dim;
        // SAFETY: every element is written by the kernel before it is read.
        let out = unsafe { dev.alloc::<half::bf16>(n) }?;
        let func =
            dev.get_or_load_custom_func("paged_decode_attention_bf16", kernels::MODULE, kernels::PTX)?;
        let (num_heads, kv_heads, head_dim) =
            (self.num_heads as u32, self.num_kv_heads as u32, self.head_dim as u32);
        let (block_size, max_blocks) = (self.block_size as u32, self.max_blocks as u32);
        let (slots_total, scale) = (pool_slots as u64, self.scale);
        let mut b = func.builder();
        b.arg(&out);
        b.arg(&q_view);
        b.arg(&k_view);
        b.arg(&v_view);
        b.arg(&tables_view);
        b.arg(&lens_view);
        b.arg(&num_heads);
        b.arg(&kv_heads);
        b.arg(&head_dim);
        b.arg(&block_size);
        b.arg(&max_blocks);
        b.arg(&slots_total);
        b.arg(&scale);
        let cfg = LaunchConfig {
            grid_dim: (seqs as u32, num_heads, 1),
            block_dim: (kernels::ATTENTION_THREADS, 1, 1),
            shared_mem_bytes: kernels::ATTENTION_THREADS / 32 * head_dim * 4,
        };
        // SAFETY: the arguments match the kernel's signature in kernels.cu; block
        // tables and lengths were checked against the pool by the step's validation.
        unsafe { b.launch(cfg) }.map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
        Ok((candle_core::CudaStorage::wrap_cuda_slice(out, dev), q_l.shape().clone()))
    }
}

#[cfg(feature = "cuda")]
mod kernels {
    pub const MODULE: &str = "inflight_kernels";
    pub const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/inflight_kernels.ptx"));
    /// Threads per block of the attention kernel: four warps share a query's keys.
    pub const ATTENTION_THREADS: u32 = 128;
}
