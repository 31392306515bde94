// The CUDA backend's own kernels, compiled to PTX by build.rs (beside this file) with nvcc when the
// `cuda` feature is on. Each has a CPU twin in ops.rs with the same contract,
// which the tests run; the GPU checks (benches/gpu) compare this code's results
// against transformers.
//
// KV pool layout (kv_pool.rs): per layer and per K/V, [kv_heads, slots, head_dim]
// bf16, slot = block * block_size + offset.

#include <cuda_bf16.h>
#include <stdint.h>

// Writes new K (or V) rows into the pool: rows[t] (kv_heads * head_dim values,
// rows `row_stride` elements apart) goes to slot slots[t] of every KV head.
extern "C" __global__ void write_kv_bf16(
    __nv_bfloat16 *__restrict__ pool,
    const __nv_bfloat16 *__restrict__ rows,
    const uint32_t *__restrict__ slots,
    uint32_t num_rows,
    uint32_t kv_heads,
    uint32_t head_dim,
    uint64_t row_stride,
    uint64_t pool_slots)
{
    const uint64_t width = (uint64_t)kv_heads * head_dim;
    const uint64_t idx = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (uint64_t)num_rows * width) return;
    const uint64_t t = idx / width, c = idx % width;
    const uint64_t head = c / head_dim, d = c % head_dim;
    pool[(head * pool_slots + slots[t]) * head_dim + d] = rows[t * row_stride + c];
}

#define MAX_PER_LANE 8 // head_dim <= 256

// PER_LANE > 0: head_dim is 32 * PER_LANE, known at compile time, so the per-lane
// arrays live in registers. PER_LANE == 0: any multiple of 32 up to 256.
template <int PER_LANE>
__device__ __forceinline__ void paged_decode_attention(
    __nv_bfloat16 *__restrict__ out,
    const __nv_bfloat16 *__restrict__ q,
    const __nv_bfloat16 *__restrict__ k_pool,
    const __nv_bfloat16 *__restrict__ v_pool,
    const uint32_t *__restrict__ block_tables,
    const uint32_t *__restrict__ lens,
    uint32_t num_heads,
    uint32_t kv_heads,
    uint32_t head_dim,
    uint32_t block_size,
    uint32_t max_blocks,
    uint64_t pool_slots,
    float scale,
    float *partial_acc,
    float *partial_max,
    float *partial_sum)
{
    const uint32_t seq = blockIdx.x, head = blockIdx.y;
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const uint32_t kv_head = head / (num_heads / kv_heads);
    const uint32_t per_lane = PER_LANE > 0 ? PER_LANE : head_dim / 32;
    const uint32_t len = lens[seq];
    const uint32_t *table = block_tables + (uint64_t)seq * max_blocks;
    const __nv_bfloat16 *qh = q + ((uint64_t)seq * num_heads + head) * head_dim;
    const __nv_bfloat16 *k_base = k_pool + (uint64_t)kv_head * pool_slots * head_dim;
    const __nv_bfloat16 *v_base = v_pool + (uint64_t)kv_head * pool_slots * head_dim;

    float qv[PER_LANE > 0 ? PER_LANE : MAX_PER_LANE], acc[PER_LANE > 0 ? PER_LANE : MAX_PER_LANE];
#pragma unroll
    for (uint32_t i = 0; i < per_lane; i++) {
        qv[i] = __bfloat162float(qh[lane + 32 * i]) * scale;
        acc[i] = 0.f;
    }
    float running_max = -INFINITY, running_sum = 0.f;
    for (uint32_t pos = warp; pos < len; pos += warps) {
        const uint64_t slot = (uint64_t)table[pos / block_size] * block_size + pos % block_size;
        const __nv_bfloat16 *k = k_base + slot * head_dim;
        float score = 0.f;
#pragma unroll
        for (uint32_t i = 0; i < per_lane; i++) score += qv[i] * __bfloat162float(k[lane + 32 * i]);
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) score += __shfl_xor_sync(0xffffffffu, score, offset);
        const float new_max = fmaxf(running_max, score);
        const float rescale = __expf(running_max - new_max);
        const float weight = __expf(score - new_max);
        running_sum = running_sum * rescale + weight;
        const __nv_bfloat16 *v = v_base + slot * head_dim;
#pragma unroll
        for (uint32_t i = 0; i < per_lane; i++)
            acc[i] = acc[i] * rescale + weight * __bfloat162float(v[lane + 32 * i]);
        running_max = new_max;
    }

    if (lane == 0) {
        partial_max[warp] = running_max;
        partial_sum[warp] = running_sum;
    }
#pragma unroll
    for (uint32_t i = 0; i < per_lane; i++) partial_acc[warp * head_dim + lane + 32 * i] = acc[i];
    __syncthreads();

    // A warp that saw no position has max -inf and contributes exp(-inf) = 0.
    float max_all = -INFINITY;
    for (uint32_t w = 0; w < warps; w++) max_all = fmaxf(max_all, partial_max[w]);
    float sum_all = 0.f;
    for (uint32_t w = 0; w < warps; w++) sum_all += partial_sum[w] * __expf(partial_max[w] - max_all);
    __nv_bfloat16 *oh = out + ((uint64_t)seq * num_heads + head) * head_dim;
    for (uint32_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float value = 0.f;
        for (uint32_t w = 0; w < warps; w++) value += partial_acc[w * head_dim + d] * __expf(partial_max[w] - max_all);
        oh[d] = __float2bfloat16(value / sum_all);
    }
}

// One decode query per sequence attends to its first lens[seq] positions, found
// through its block table. One thread block per (sequence, query head); each
// warp walks a strided share of the positions with an online softmax, holding
// head_dim / 32 values per lane; the warps' partial results are merged at the
// end. Scores, softmax and the weighted sum are f32. Dynamic shared memory:
// warps * head_dim floats.
extern "C" __global__ void paged_decode_attention_bf16(
    __nv_bfloat16 *__restrict__ out,           // [seqs, num_heads, head_dim]
    const __nv_bfloat16 *__restrict__ q,       // [seqs, num_heads, head_dim]
    const __nv_bfloat16 *__restrict__ k_pool,  // [kv_heads, pool_slots, head_dim]
    const __nv_bfloat16 *__restrict__ v_pool,
    const uint32_t *__restrict__ block_tables, // [seqs, max_blocks]
    const uint32_t *__restrict__ lens,         // [seqs]
    uint32_t num_heads,
    uint32_t kv_heads,
    uint32_t head_dim,
    uint32_t block_size,
    uint32_t max_blocks,
    uint64_t pool_slots,
    float scale)
{
    extern __shared__ float partial_acc[];
    __shared__ float partial_max[32], partial_sum[32];
#define ATTEND(N) paged_decode_attention<N>(out, q, k_pool, v_pool, block_tables, lens, num_heads, kv_heads, \
        head_dim, block_size, max_blocks, pool_slots, scale, partial_acc, partial_max, partial_sum)
    switch (head_dim) {
    case 64: ATTEND(2); break;
    case 128: ATTEND(4); break;
    default: ATTEND(0); break;
    }
#undef ATTEND
}
