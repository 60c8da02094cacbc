// The row kernel: fused decode over narrow-head q8_0 / q4_0 caches, one warp per token row of
// every KV head (mma.sync m16n8k16, cp.async, sm_80+).
//
// Why a second kernel: with narrow heads (the seed's DBA cache at Llama-3.2-1B widths keeps 4
// semantic and 8 geometric key values per KV head, eight heads to a 32-value block) the
// per-KV-head kernel (decode_mma.cu) spends most of its instructions gathering 2-byte pieces of
// key blocks that eight warps share, and half its softmax lanes on padding (4 query heads in
// n = 8 columns). Here one warp takes all KV heads of a sequence, 16 positions per step:
//   scores  S (16 positions x 8 query heads, per n-tile j) = sum over the k-steps of the row
//           that hold n-tile j's KV heads of K_row (positions x 16 row values) @ Q^T, Q^T being
//           block-diagonal (a query head sees only its KV head's values);
//   values  O^T (dv x 8 heads) of n-tile j += V_h^T (dv x positions) @ P'^T for each KV head h
//           of the n-tile, its weights with the other heads' columns masked to zero, so the
//           n-tile's KV heads share one accumulator.
// Every byte of a key row goes to some lane (no duplicate gathers), and the softmax columns
// are all real query heads. Each team copies its steps 16 bytes at a time (cp.async) into its
// own ring of shared-memory slots a step ahead, so no registers hold bytes in flight and
// every fragment load is a 16-bit shared load at a constant offset. The running maximum is
// re-reduced across the warp only when a score passes it by more than kLazyMax (a warp vote):
// weights are then at most 2^kLazyMax, which keeps p * d within fp16 for any fp16-representable
// block scale, and the result is the same online softmax (only rounding differs). Values enter
// the mma as their unsigned codes read as fp16 subnormals (one mask per register, no fp16
// arithmetic; biased_bytes in mma_fragments.cuh), the code offset coming back once per split
// through each head's sum of weights. A sequence's slots of steps are dealt out in turn to the
// teams (1 or 2 warps) of all its blocks (slot i to team i mod (kRowRuns n_splits)), so every
// team at work on a sequence reads near the others (see `position`); a block's teams merge
// through shared memory into one partial per head. In a team of 2 both warps copy the team's
// slots into one ring and each computes half of the KV heads (their n-tiles read disjoint
// k-steps of a row, so no key block is decoded twice): the seed's DBA cache needs 162-168
// registers a warp for all 8 KV heads (12 warps an SM) and 120-127 for 4 (16 warps an SM),
// which H200 decode prefers (below, at row_kernel).
//
// Standard attention's head-layout caches take the same path: each KV head's 16 key rows of
// a step are staged as one run (as head-layout values are), and the warp reads them as the
// virtual token rows of its group of KV heads (2 at head dim 64: a whole row of 8 needs 255
// registers). The per-KV-head kernel reads such caches 2 bytes per load and leaves HBM idle
// (H200, batch 8 x 32k, q4_0: 103.6 us there, 47.6 here), and takes keys only up to 64 values
// wide: head dim 128 (Llama-3-8B) has this kernel alone (q4_0 86.1 us at batch 8 x 32k, SDPA's
// fp16 245.1).
//
// Operands are the per-KV-head kernel's (fp16 dequantized keys and queries, fp16 weights p * d
// against exact integer values, fp32 accumulation), so its tolerances hold here.
#include "decode_rows.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "mma_fragments.cuh"

namespace caramba_cuda {
namespace {

constexpr int kStep = 16;         // positions per step (the value mma's k)
constexpr float kLazyMax = 3.0f;  // log2 headroom of the running maximum (weights <= 8)

// Low 16 bits of a and of b in one word (a low).
__device__ __forceinline__ uint32_t join16(uint32_t a, uint32_t b) {
    return __byte_perm(a, b, 0x5410);
}

// 16-byte asynchronous copies (zero-filling what lies past the source bytes given). Whole
// steps ask L2 to fetch the 256 bytes around each piece from HBM at once (the team's
// neighbouring lanes want them): H100, batch 8, us, q8_0 32k 41.6 -> 40.7, 64k 76.5 -> 74.0.
// Copying whole steps with cp.async.bulk (TMA) instead did not read faster: 42.1 and 76.6.
// The cache is read once per call, so its lines go first when L2 needs room (evict_first, as
// __ldcs loads have): H100, batch 8, us, same run, q8_0 32k 39.8 -> 38.7, 64k 72.5 -> 71.2,
// q4_0 32k 25.5 -> 24.5, batch 1 x 64k q8_0 15.7 -> 15.0.
__device__ __forceinline__ void copy16(uint32_t dst, const void* src) {
    uint64_t policy;
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
    asm volatile("cp.async.cg.shared.global.L2::cache_hint.L2::256B [%0], [%1], 16, %2;" ::"r"(dst),
                 "l"(src), "l"(policy));
}
__device__ __forceinline__ void copy16(uint32_t dst, const void* src, uint32_t bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void copies_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void copies_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }
// 16-bit loads at byte addresses of the shared window.
__device__ __forceinline__ uint32_t lds16(uint32_t at) {
    uint32_t v;
    asm volatile("ld.shared.u16 %0, [%1];" : "=r"(v) : "r"(at));
    return v;
}

// The compile-time shape of one instance: formats, query heads per KV head (G), KV heads a
// warp reads, per-head key widths (DG = 0: standard attention), value blocks per head, and
// whether the values and the keys sit in the token layout (every head in one row) or the head
// layout (where a call's KV heads may be several groups of HKV, each with its own blocks).
template <int KFMT, int VFMT, int G_, int HKV_, int DS, int DG, int NBV_, bool VTOKEN, bool KTOKEN,
          int TEAM_, int SUB_ = 1>
struct Shape {
    static constexpr int G = G_, HKV = HKV_, NBV = NBV_;
    // Positions a slot stages: SUB 16-position steps, computed one after the other between two
    // of the team's barriers.
    static constexpr int SUB = SUB_, STAGE_POS = kStep * SUB_;
    // Warps that share one run of staged steps, each computing HKV / TEAM of the KV heads:
    // the same bytes and arithmetic over more, smaller warps (fewer registers each).
    static constexpr int TEAM = TEAM_, TL = 32 * TEAM, WARPS = kRowRuns * TEAM;
    static constexpr bool K_ROWS = KTOKEN;
    static constexpr int HQ = G * HKV, NT = HQ / 8, DV = 32 * NBV, PATHS = DG > 0 ? 2 : 1;
    static constexpr int WH = HKV / TEAM, NTW = NT / TEAM;  // a warp's KV heads, n-tiles
    static constexpr bool KQ4 = KFMT == CARAMBA_FORMAT_Q4_0, VQ4 = VFMT == CARAMBA_FORMAT_Q4_0;
    static constexpr bool V_ROWS = VTOKEN;
    static constexpr int KBYTES = KQ4 ? 18 : 34, VBYTES = VQ4 ? 18 : 34;
    __host__ __device__ static constexpr int dim(int path) { return path ? DG : DS; }
    __host__ __device__ static constexpr int blocks(int path) { return HKV * dim(path) / 32; }
    // Row values of n-tile j's KV heads (8 / G heads of dim values): a run of rho values at j rho.
    __host__ __device__ static constexpr int rho(int path) { return 8 * dim(path) / G; }
    __host__ __device__ static constexpr int first_step(int path, int j) {
        return j * rho(path) / kStep;
    }
    __host__ __device__ static constexpr int steps(int path) {
        return rho(path) < kStep ? 1 : rho(path) / kStep;
    }
    __host__ __device__ static constexpr bool uses(int path, int j, int step) {
        return step >= first_step(path, j) && step < first_step(path, j) + steps(path);
    }
    static constexpr int MAX_STEPS = steps(0) > steps(1) ? steps(0) : steps(1);
    // Whether team member m's n-tiles read k-step 2 blk or 2 blk + 1 of a key path's row.
    __host__ __device__ static constexpr bool block_used(int path, int blk, int m) {
        for (int j = m * NTW; j < (m + 1) * NTW; ++j)
            if (uses(path, j, 2 * blk) || uses(path, j, 2 * blk + 1)) return true;
        return false;
    }

    // One step's bytes in shared memory: per key path its 16 token rows (token layout) or 16
    // rows per KV head (head layout), then the values: 16 rows per KV head (head layout) or 16
    // rows of every head (token layout). Rows are dense in global memory (token stride = row
    // bytes), so a step of one tensor is one contiguous run (per KV head in the head layout).
    // Either way the kernel reads a key path as virtual token rows of every KV head's values.
    __host__ __device__ static constexpr int key_row(int path) { return blocks(path) * KBYTES; }
    __host__ __device__ static constexpr int head_row(int path) { return dim(path) / 32 * KBYTES; }
    // Bytes from one position's key row to the next in a slot, and where block blk of the
    // virtual row of a slot's first position sits.
    __host__ __device__ static constexpr int key_pos(int path) {
        return KTOKEN ? key_row(path) : head_row(path);
    }
    __host__ __device__ static constexpr int key_block_at(int path, int blk) {
        return KTOKEN ? blk * KBYTES
                      : blk / (dim(path) / 32) * STAGE_POS * head_row(path) + blk % (dim(path) / 32) * KBYTES;
    }
    static constexpr int VROW = NBV * VBYTES;          // one head's value row
    static constexpr int V_TOKEN = VTOKEN ? HKV * VROW : VROW;  // bytes per position
    static constexpr int V_HEAD = VTOKEN ? VROW : STAGE_POS * VROW;  // bytes per KV head
    __host__ __device__ static constexpr int key_at(int path) { return path ? STAGE_POS * key_row(0) : 0; }
    static constexpr int V_AT = STAGE_POS * (key_row(0) + (DG > 0 ? key_row(1) : 0));
    static constexpr int STAGE = (V_AT + STAGE_POS * HKV * VROW + 15) / 16 * 16;
    // Bytes from sub-step u's first key row (per path) or value row to sub-step u + 1's.
    __host__ __device__ static constexpr int key_sub(int path) { return kStep * key_pos(path); }
    static constexpr int V_SUB = kStep * V_TOKEN;
    // Slots per warp: one step in flight while the warp computes the one before. More ran slower
    // (H200, batch 8, 32k, us, q4_0 / q8_0: 2 slots 26.6 / 37.7, 3 slots 27.4 / 39.3, 4 slots
    // 28.8 / 39.5): a wave of warps already keeps more bytes in flight than HBM needs to stay
    // busy, and each extra step per warp only lengthens the queue every first load waits in.
    static constexpr int STAGES = 2;
    static constexpr int MERGE = kRowRuns * HQ * (DV + 3) * 4;  // partials of the block's runs
    static constexpr int RINGS = kRowRuns * STAGES * STAGE;
    static constexpr int SMEM = RINGS > MERGE ? RINGS : MERGE;
    // Value runs of a step (16 positions of one KV head, or of every head in the token layout)
    // and the team's lanes that copy each: TL / HKV lanes per KV head, so every lane has one.
    static constexpr int V_LANES = VTOKEN ? TL : TL / HKV;
    static constexpr int V_PIECES = SUB * V_TOKEN;  // 16-byte pieces of a run: SUB x its bytes per position
    static constexpr int K_LANES = TL / HKV;  // head-layout keys: lanes per KV head's run
    // Blocks per SM the register budget is cut for: 3 (12 warps, up to 168 registers). q4_0 keys
    // and values would fit 4 blocks at 128 registers, but ran slower (H200, batch 8, us: 30.3
    // vs 29.7 at 32k, 45.9 vs 44.5 at 64k): register pressure recomputed addresses every step.
    // Wide heads keep 2 registers of query fragments per k-step and n-tile (64 at d 64 over 32
    // query heads): 2 blocks (up to 255 registers) then. Teams of 2 warps: 2 blocks of 8 warps
    // (120-127 registers, no spills); 3 blocks (80 registers) spilled and ran slower (H200, DBA
    // q4_0, batch 8 x 32k: 27.6 us against 24.6).
    static constexpr int MIN_BLOCKS = TEAM == 2 ? 2 : PATHS * NT * MAX_STEPS <= 8 ? 3 : 2;

    static constexpr bool valid(int path) {
        return dim(path) > 0 && (HKV * dim(path)) % 32 == 0 &&
               (rho(path) < kStep ? kStep % rho(path) == 0 : rho(path) % kStep == 0);
    }
    static_assert(8 % G == 0 && HQ % 8 == 0, "n-tiles of whole KV heads");
    static_assert(valid(0) && (DG == 0 || valid(1)), "rows of whole blocks, aligned n-tile runs");
    static_assert(HQ * NBV <= 64, "value accumulators: at most 64 registers");
    static_assert(G >= 2, "a lane's two columns of an n-tile share one KV head");
    static_assert(VTOKEN || TL % HKV == 0, "value runs: whole lanes per KV head");
    static_assert((TEAM == 1 || TEAM == 2) && NT % TEAM == 0, "teams: whole n-tiles a warp");
    static_assert(KTOKEN || (TL % HKV == 0 && DS % 32 == 0 && DG % 32 == 0),
                  "head-layout keys: whole lanes and whole blocks per KV head");
};

template <class S>
__global__ void __launch_bounds__(S::WARPS * 32, S::MIN_BLOCKS) decode_rows_kernel(const caramba_cuda_decode_params p) {
    constexpr int NTW = S::NTW, HKV = S::HKV, NBV = S::NBV, PATHS = S::PATHS, G = S::G, TL = S::TL;
    extern __shared__ __align__(16) uint8_t smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int run = warp / S::TEAM, member = warp % S::TEAM;  // the team's run, the warp in it
    const int tl = threadIdx.x % TL;                           // lane in the team
    const int g = lane >> 2;  // mma groupID: position row / value row / query head
    const int c = lane & 3;   // mma thread in group: column pair
    // Blocks in (sequence, group of HKV KV heads, split) order; head-layout caches with more KV
    // heads than an instance's HKV give each group its own blocks.
    const int groups = p.kv_heads / HKV;
    const int b = static_cast<int>(blockIdx.x / p.n_splits / groups);
    const int group = static_cast<int>(blockIdx.x / p.n_splits % groups);
    const int split = static_cast<int>(blockIdx.x % p.n_splits);
    const int head0 = group * HKV;  // the group's first KV head

    const int end = min(max(p.lengths[b], 0), p.s_max);  // the sequence's length

    // ---- staging: the sequence's slots (S::SUB 16-position steps each) go to the teams of its
    // blocks in turn: team `team` of `teams` takes slots team, team + teams, ... and copies them
    // into its own ring of S::STAGES slots, S::STAGES - 1 slots ahead of their use. So the
    // teams reading a sequence sweep it together, a window of `teams` slots, where contiguous
    // splits (each team a run of its own) read at as many places apart. H100, batch 8, us,
    // runs -> dealt slots: q8_0 32k 41.5 -> 40.4, 64k 76.4 -> 73.8; q4_0 64k 45.1 -> 43.9.
    constexpr int SP = S::STAGE_POS;
    const int teams = kRowRuns * p.n_splits, team = split * kRowRuns + run;
    const int slots = end / SP + (end % SP > 0);
    const int run_slots = slots > team ? (slots - 1 - team) / teams + 1 : 0;
    // The first position of the team's k-th slot (past the last, `end`: in range for any
    // split count, where the product would not be).
    auto position = [&](int k) {
        return k < run_slots ? static_cast<int>(SP * (team + int64_t(teams) * k)) : end;
    };
    const uint32_t ring = static_cast<uint32_t>(__cvta_generic_to_shared(smem)) +
                          run * S::STAGES * S::STAGE;
    // A slot's positions of a tensor's rows are `row` 16-byte pieces, copied by the team's TL
    // lanes. Key rows: lane i copies pieces i, i + TL, ...; values: lane i copies pieces
    // i % V_LANES + V_LANES j of its run (KV head i / V_LANES in the head layout), so each lane's
    // sources of a step are one base pointer per tensor plus immediates.
    // Head-layout keys go as the values do: lane i copies pieces i % K_LANES + K_LANES j of KV
    // head i / K_LANES's run.
    const int k_lane = S::K_ROWS ? tl : tl % S::K_LANES, k_run = S::K_ROWS ? 0 : tl / S::K_LANES;
    // Each tensor's source pointer sits at the next slot to issue (this lane's first piece) and
    // moves `teams` slots on per issue: an add per tensor, not a 64-bit multiply per step.
    const int64_t run_first = int64_t(SP) * team, hop = int64_t(SP) * teams;
    const uint8_t* key_src[PATHS];
#pragma unroll
    for (int path = 0; path < PATHS; ++path) {
        const caramba_cuda_cache& t = path ? p.k_geo : p.k_sem;
        key_src[path] = static_cast<const uint8_t*>(t.data) + b * t.batch_stride +
                        (S::K_ROWS ? 0 : (head0 + k_run) * t.head_stride) + 16 * k_lane +
                        run_first * S::key_pos(path);
    }
    const int v_lane = tl % S::V_LANES, v_run = S::V_ROWS ? 0 : tl / S::V_LANES;
    const uint8_t* v_src = static_cast<const uint8_t*>(p.v.data) + b * p.v.batch_stride +
                           (head0 + v_run) * p.v.head_stride + 16 * v_lane + run_first * S::V_TOKEN;
    const uint32_t v_dst = S::V_AT + v_run * S::V_HEAD + 16 * v_lane;
    // Copies the n <= 16 positions at the source pointers into `slot`: whole steps (Full) as
    // plain 16-byte copies, a split's last step with the bytes past the n-th zero-filled (and
    // not read).
    auto stage = [&](auto full, uint32_t slot, int n) {
        constexpr bool Full = decltype(full)::value;
        // Piece `piece` of a run whose first byte is src - 16 first (`bytes` of it are real).
        auto copy = [&](uint32_t dst, const uint8_t* src, int piece, int first, int bytes) {
            if constexpr (Full) {
                copy16(dst, src);
            } else {
                const int left = bytes - 16 * piece;
                copy16(dst, left > 0 ? src : src - 16 * first,
                       static_cast<uint32_t>(min(max(left, 0), 16)));
            }
        };
#pragma unroll
        for (int path = 0; path < PATHS; ++path) {
            if constexpr (S::K_ROWS) {
                const int row = S::SUB * S::key_row(path);  // pieces of the slot's rows
                const uint8_t* src = key_src[path];
#pragma unroll
                for (int r = 0; r < (row + TL - 1) / TL; ++r) {
                    const int piece = tl + TL * r;
                    if (TL * (r + 1) > row && piece >= row) break;
                    copy(slot + S::key_at(path) + 16 * piece, src + 16 * TL * r, piece, tl,
                         n * S::key_row(path));
                }
            } else {
                constexpr int L = S::K_LANES;
                const int row = S::SUB * S::head_row(path);  // pieces of a KV head's run
                const uint8_t* src = key_src[path];
                const uint32_t dst = slot + S::key_at(path) + k_run * S::STAGE_POS * S::head_row(path) +
                                     16 * k_lane;
#pragma unroll
                for (int r = 0; r < (row + L - 1) / L; ++r) {
                    const int piece = k_lane + L * r;
                    if (L * (r + 1) > row && piece >= row) break;
                    copy(dst + 16 * L * r, src + 16 * L * r, piece, k_lane, n * S::head_row(path));
                }
            }
        }
        const uint8_t* src = v_src;
#pragma unroll
        for (int r = 0; r < (S::V_PIECES + S::V_LANES - 1) / S::V_LANES; ++r) {
            const int piece = v_lane + S::V_LANES * r;
            if (S::V_LANES * (r + 1) > S::V_PIECES && piece >= S::V_PIECES) break;
            copy(slot + v_dst + 16 * S::V_LANES * r, src + 16 * S::V_LANES * r, piece, v_lane,
                 n * S::V_TOKEN);
        }
    };
    auto slot = [&](int k) { return ring + (k % S::STAGES) * S::STAGE; };
    auto issue = [&](int k) {
        const int t0 = position(k);
        if (k < run_slots && t0 + SP <= end) stage(std::true_type{}, slot(k), SP);
        else if (k < run_slots) stage(std::false_type{}, slot(k), end - t0);
        copies_commit();  // an empty group where nothing is left: the wait counts stay uniform
#pragma unroll
        for (int path = 0; path < PATHS; ++path) key_src[path] += hop * S::key_pos(path);
        v_src += hop * S::V_TOKEN;
    };

    // The first step's copies go out before the queries are read, so their round trips
    // overlap (a warp takes only ten or so steps of a 32k split).
#pragma unroll
    for (int k = 0; k < S::STAGES - 1; ++k) issue(k);

    // A warp's state: its NTW n-tiles (team member m computes n-tiles m NTW .. m NTW + NTW - 1,
    // KV heads m WH ..). The code that names n-tiles is instantiated per member (`as_member`),
    // so every fragment index stays a compile-time constant.
    auto as_member = [&](auto f) {
        if constexpr (S::TEAM == 1) f(std::integral_constant<int, 0>{});
        else if (member == 0) f(std::integral_constant<int, 0>{});
        else f(std::integral_constant<int, 1>{});
    };
    uint32_t qf[PATHS][NTW][S::MAX_STEPS][2];
    float m_run[NTW][2], l_run[NTW][2];  // columns 2c, 2c + 1 of each n-tile
    // O^T fragments per n-tile, value block and tile: the KV heads of an n-tile share one
    // accumulator, each adding only its own columns (its weights with the others' masked).
    float acc[NTW][NBV][2][4] = {};
    // Values enter the mma as subnormal fp16 patterns of their unsigned codes (biased_bytes,
    // mma_fragments.cuh): acc holds 2^-24 (q4_0 high nibbles: 2^-20) times the sum of code x
    // weight, and w_sum the sum of each column's fp16 weights (an mma against ones), so a
    // partial is acc * 2^24 - offset * w_sum with offset 8 (q4_0) or 128 (q8_0).
    float w_sum[NTW][NBV][2] = {};
#pragma unroll
    for (int j = 0; j < NTW; ++j) {
        m_run[j][0] = m_run[j][1] = -INFINITY;
        l_run[j][0] = l_run[j][1] = 0.f;
    }

    // Query fragments (B operand, k = row value, n = query head): n-tile j's k-steps only.
    // Element e of k-step i of n-tile j is value u of head h's query (0 outside the head).
    auto query_element = [&](int path, int j, int i, int e, int& h, int& u) {
        h = 8 * j + g;
        u = kStep * (S::first_step(path, j) + i) + 2 * c + (e & 1) + 8 * (e >> 1) -
            h / G * S::dim(path);
    };
    const void* q_rows[PATHS];  // sequence b's queries (heads x dim elements)
#pragma unroll
    for (int path = 0; path < PATHS; ++path) {
        const int64_t first = (int64_t(b) * p.q_heads + head0 * G) * S::dim(path);
        q_rows[path] = static_cast<const uint8_t*>(path ? p.q_geo : p.q_sem) +
                       first * (p.q_type == CARAMBA_CUDA_QUERY_F32 ? 4 : 2);
    }
    as_member([&](auto member_c) {
        constexpr int M = decltype(member_c)::value;
        uint32_t q_raw[PATHS][NTW][S::MAX_STEPS][4];
        auto gather = [&](auto f32) {
#pragma unroll
            for (int path = 0; path < PATHS; ++path)
#pragma unroll
                for (int j = 0; j < NTW; ++j)
#pragma unroll
                    for (int i = 0; i < S::steps(path); ++i)
#pragma unroll
                        for (int e = 0; e < 4; ++e) {
                            int h, u;
                            query_element(path, M * NTW + j, i, e, h, u);
                            q_raw[path][j][i][e] = u >= 0 && u < S::dim(path)
                                ? query_bits<decltype(f32)::value>(q_rows[path], h * S::dim(path) + u) : 0u;
                        }
        };
        if (p.q_type == CARAMBA_CUDA_QUERY_F32) gather(std::true_type{});
        else gather(std::false_type{});
#pragma unroll
        for (int path = 0; path < PATHS; ++path) {
            const float scale = (path ? p.scale_geo : p.scale_sem) * kLog2e;
#pragma unroll
            for (int j = 0; j < NTW; ++j) {
#pragma unroll
                for (int i = 0; i < S::steps(path); ++i) {
                    float x[4];
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        int h, u;
                        query_element(path, M * NTW + j, i, e, h, u);
                        x[e] = u >= 0 && u < S::dim(path) ? query_float(q_raw[path][j][i][e], p.q_type) * scale : 0.f;
                    }
                    qf[path][j][i][0] = pack(x[0], x[1]);
                    qf[path][j][i][1] = pack(x[2], x[3]);
                }
            }
        }
    });
    // Byte addresses of this lane's pieces within a slot (the rest are immediates).
    uint32_t key_data[PATHS], key_scale[PATHS];
#pragma unroll
    for (int path = 0; path < PATHS; ++path) {
        key_scale[path] = S::key_at(path) + g * S::key_pos(path);
        key_data[path] = key_scale[path] + 2 + 2 * c;
    }
    const uint32_t v_data = S::V_AT + 2 * c * S::V_TOKEN + 2 + 2 * g;  // bytes 2g, 2g + 1
    const uint32_t v_scale = S::V_AT + (2 * c / G) * S::V_HEAD + g * S::V_TOKEN;
    constexpr uint32_t kOnes = 0x3C003C00u;  // fp16 1.0 in both halves
    const uint32_t ones[4] = {kOnes, kOnes, kOnes, kOnes};
    constexpr int HEADS_PER_TILE = 8 / G;
    uint32_t own_columns[HEADS_PER_TILE];  // B-operand mask: this lane's column g is head sub's
#pragma unroll
    for (int sub = 0; sub < HEADS_PER_TILE; ++sub) own_columns[sub] = g / G == sub ? ~0u : 0u;

    // ---- the steps of the team's run, in member M's n-tiles
    as_member([&](auto member_c) {
        constexpr int M = decltype(member_c)::value;
        // ---- scores of sub-step u of the step in `slot`, one key block (two k-steps) at a time
        auto scores = [&](uint32_t slot, int u, float (&s)[NTW][4]) {
#pragma unroll
            for (int j = 0; j < NTW; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
            for (int path = 0; path < PATHS; ++path) {
#pragma unroll
                for (int blk = 0; blk < S::blocks(path); ++blk) {
                    if (!S::block_used(path, blk, M)) continue;
                    uint32_t a[2][4];  // k-steps 2 blk (values 0-15), 2 blk + 1 (16-31)
#pragma unroll
                    for (int row = 0; row < 2; ++row) {
                        const uint32_t at = slot + u * S::key_sub(path) + 8 * row * S::key_pos(path) +
                                            S::key_block_at(path, blk);
                        const __half2 scale = __half2half2(__ushort_as_half(
                            static_cast<unsigned short>(lds16(at + key_scale[path]))));
                        const uint32_t d = at + key_data[path];
                        if (S::KQ4) {
                            // bytes 2c, 2c + 1 | 2c + 8, 2c + 9 -> k 2c, 2c + 1 | 2c + 8, 2c + 9
                            const uint32_t x = join16(lds16(d), lds16(d + 8));
#pragma unroll
                            for (int half = 0; half < 2; ++half) {
                                const uint32_t y = __byte_perm(x, 0, half ? 0x4342 : 0x4140);
                                a[0][2 * half + row] = as_u32(__hmul2(nibbles(y), scale));
                                a[1][2 * half + row] = as_u32(__hmul2(high_nibbles(y), scale));
                            }
                        } else {
#pragma unroll
                            for (int ks = 0; ks < 2; ++ks) {
                                const uint32_t x = join16(lds16(d + 16 * ks), lds16(d + 16 * ks + 8));
#pragma unroll
                                for (int half = 0; half < 2; ++half) {
                                    const uint32_t y = __byte_perm(x, 0, half ? 0x4342 : 0x4140);
                                    a[ks][2 * half + row] = as_u32(__hmul2(int8s(y), scale));
                                }
                            }
                        }
                    }
#pragma unroll
                    for (int ks = 0; ks < 2; ++ks) {
                        const int step_index = 2 * blk + ks;
#pragma unroll
                        for (int j = 0; j < NTW; ++j) {
                            const int J = M * NTW + j;
                            if (!S::uses(path, J, step_index)) continue;
                            const int i = step_index - S::first_step(path, J);
                            mma16816(s[j], a[ks], qf[path][j][i][0], qf[path][j][i][1]);
                        }
                    }
                }
            }
        };

        // ---- sub-step u's online softmax over its scores s, then its values
        auto consume = [&](uint32_t slot, int u, int t0, float (&s)[NTW][4]) {
            slot += u * S::V_SUB;  // the sub-step's value rows
            // s[j][0..1] are row g, s[j][2..3] row g + 8
            if (t0 + kStep > end) {
#pragma unroll
                for (int row = 0; row < 2; ++row) {
                    if (t0 + g + 8 * row < end) continue;
#pragma unroll
                    for (int j = 0; j < NTW; ++j) s[j][2 * row] = s[j][2 * row + 1] = -INFINITY;
                }
            }
            float cmax[NTW][2];
            bool rising = false;
#pragma unroll
            for (int j = 0; j < NTW; ++j) {
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    cmax[j][i] = fmaxf(s[j][i], s[j][2 + i]);
                    rising |= cmax[j][i] > m_run[j][i] + kLazyMax;
                }
            }
            if (__any_sync(0xffffffffu, rising)) {
#pragma unroll
                for (int j = 0; j < NTW; ++j) {
#pragma unroll
                    for (int i = 0; i < 2; ++i) {
                        const float m_new = fmaxf(m_run[j][i], warp_max_over_rows(cmax[j][i]));
                        const float alpha = fast_exp2(m_run[j][i] - m_new);  // 0 on the first step
                        m_run[j][i] = m_new;
                        l_run[j][i] *= alpha;
#pragma unroll
                        for (int nb = 0; nb < NBV; ++nb) w_sum[j][nb][i] *= alpha;
#pragma unroll
                        for (int nb = 0; nb < NBV; ++nb)
#pragma unroll
                            for (int tile = 0; tile < 2; ++tile) {
                                acc[j][nb][tile][i] *= alpha;
                                acc[j][nb][tile][2 + i] *= alpha;
                            }
                    }
                }
            }
#pragma unroll
            for (int j = 0; j < NTW; ++j) {
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    s[j][i] = fast_exp2(s[j][i] - m_run[j][i & 1]);
                    l_run[j][i & 1] += s[j][i];
                }
            }

            // ---- values: weights times their KV head's block scale, then V^T @ P'^T per KV head
            uint32_t pb[NTW][NBV][2];  // B fragments: positions 0-7 | 8-15 of the step
#pragma unroll
            for (int j = 0; j < NTW; ++j) {
#pragma unroll
                for (int nb = 0; nb < NBV; ++nb) {
                    const uint32_t at =
                        slot + v_scale + (8 * (M * NTW + j) / G) * S::V_HEAD + nb * S::VBYTES;
                    const float da = __half2float(__ushort_as_half(static_cast<unsigned short>(lds16(at))));
                    const float db = __half2float(
                        __ushort_as_half(static_cast<unsigned short>(lds16(at + 8 * S::V_TOKEN))));
                    pb[j][nb][0] = transpose8x8(pack(s[j][0] * da, s[j][1] * da));
                    pb[j][nb][1] = transpose8x8(pack(s[j][2] * db, s[j][3] * db));
                    float column[4] = {};  // every row: the step's weights of columns 2c, 2c + 1
                    mma16816(column, ones, pb[j][nb][0], pb[j][nb][1]);
                    w_sum[j][nb][0] += column[0];
                    w_sum[j][nb][1] += column[1];
                }
            }
#pragma unroll
            for (int kvh = M * S::WH; kvh < (M + 1) * S::WH; ++kvh) {
                const int j = kvh * G / 8 - M * NTW;
#pragma unroll
                for (int nb = 0; nb < NBV; ++nb) {
                    // positions 2c, 2c + 1, 2c + 8, 2c + 9 of this head's block nb
                    const uint32_t at = slot + v_data + kvh * S::V_HEAD + nb * S::VBYTES;
                    uint32_t x[4];
#pragma unroll
                    for (int e = 0; e < 4; ++e) x[e] = lds16(at + ((e & 1) + 8 * (e >> 1)) * S::V_TOKEN);
                    const uint32_t lo = join16(x[0], x[1]), hi = join16(x[2], x[3]);
                    uint32_t a0[4], a1[4];  // tiles 0 and 1 of this block
                    if (S::VQ4) {
                        const uint32_t lo1 = __byte_perm(x[0], x[1], 0x7531);  // bytes 2g + 1
                        const uint32_t hi1 = __byte_perm(x[2], x[3], 0x7531);
                        const uint32_t rows[4] = {lo, lo1, hi, hi1};
#pragma unroll
                        for (int e = 0; e < 4; ++e) {
                            a0[e] = rows[e] & 0x000F000Fu;  // n 2^-24
                            a1[e] = rows[e] & 0x00F000F0u;  // n 2^-20
                        }
                    } else {
                        uint32_t y[4];
#pragma unroll
                        for (int e = 0; e < 4; ++e) y[e] = lds16(at + 16 + ((e & 1) + 8 * (e >> 1)) * S::V_TOKEN);
                        const uint32_t lo2 = join16(y[0], y[1]), hi2 = join16(y[2], y[3]);
                        const uint32_t rows[2][4] = {{lo, lo >> 8, hi, hi >> 8},
                                                     {lo2, lo2 >> 8, hi2, hi2 >> 8}};
#pragma unroll
                        for (int e = 0; e < 4; ++e) {
                            a0[e] = biased_bytes(rows[0][e]);  // (b + 128) 2^-24
                            a1[e] = biased_bytes(rows[1][e]);
                        }
                    }
                    const uint32_t mine = own_columns[kvh % HEADS_PER_TILE];
                    const uint32_t b0 = pb[j][nb][0] & mine, b1 = pb[j][nb][1] & mine;
                    mma16816(acc[j][nb][0], a0, b0, b1);
                    mma16816(acc[j][nb][1], a1, b0, b1);
                }
            }
        };

        // Slot k's bytes are copied S::STAGES - 1 slots ahead of their use (the first ones above).
        for (int k = 0; k < run_slots; ++k) {
            copies_wait<S::STAGES - 2>();
            // Every team lane's pieces of step k are in; step k - 1's slot is free.
            if constexpr (S::TEAM == 1) __syncwarp();
            else asm volatile("bar.sync %0, %1;" ::"r"(1 + run), "n"(TL) : "memory");
            issue(k + S::STAGES - 1);
#pragma unroll
            for (int u = 0; u < S::SUB; ++u) {
                const int t0 = position(k) + u * kStep;
                if (S::SUB > 1 && t0 >= end) break;  // the sequence's last slot, partly filled
                float s[NTW][4];
                scores(slot(k), u, s);
                consume(slot(k), u, t0, s);
            }
        }
    });
    // The merge grid may start now (its launch overlaps this grid's tail). Here, not at the
    // start: H100, batch 8 x 32k, us, same run, no dependent launch / trigger at the start /
    // here: q8_0 38.7 / 39.5 / 38.4, q4_0 24.7 / 24.9 / 23.9.
    allow_dependent_launch();
    copies_wait<0>();
    __syncthreads();  // the rings become the merge buffers

    // ---- merge the block's runs through shared memory: one partial per (head, split)
    constexpr int DV = S::DV, HQ = S::HQ;
    float* sm_m = reinterpret_cast<float*>(smem);                  // [run][head]
    float* sm_l = sm_m + kRowRuns * HQ;                            // [run][head]
    float* sm_o = sm_l + kRowRuns * HQ;                            // [run][head][DV + 1]
#pragma unroll
    for (int j = 0; j < NTW; ++j) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int h = 8 * (member * NTW + j) + 2 * c + i;
            const float l = warp_sum_over_rows(l_run[j][i]);
            if (g == 0) {
                sm_m[run * HQ + h] = m_run[j][i];
                sm_l[run * HQ + h] = l;
            }
            float* o = sm_o + (run * HQ + h) * (DV + 1);  // + 1: lanes c write heads DV apart
#pragma unroll
            for (int nb = 0; nb < NBV; ++nb) {
                const float offset = (S::VQ4 ? 8.f : 128.f) * w_sum[j][nb][i];
#pragma unroll
                for (int tile = 0; tile < 2; ++tile) {
                    const float unit = S::VQ4 && tile ? 0x1p20f : 0x1p24f;
                    const int value = 32 * nb + 16 * tile + 2 * g;
                    o[value] = fmaf(acc[j][nb][tile][i], unit, -offset);          // row g
                    o[value + 1] = fmaf(acc[j][nb][tile][2 + i], unit, -offset);  // row g + 8
                }
            }
        }
    }
    __syncthreads();
    // Thread t joins PER_THREAD consecutive values of head t * PER_THREAD / DV.
    constexpr int PER_THREAD = HQ * DV / (S::WARPS * 32);
    static_assert(PER_THREAD >= 1 && HQ * DV % (S::WARPS * 32) == 0 && DV % PER_THREAD == 0,
                  "whole heads per thread group");
    const int h = threadIdx.x * PER_THREAD / DV, v0 = threadIdx.x * PER_THREAD % DV;
    float m = -INFINITY;
#pragma unroll
    for (int r = 0; r < kRowRuns; ++r) m = fmaxf(m, sm_m[r * HQ + h]);
    float f[kRowRuns], l = 0.f;
#pragma unroll
    for (int r = 0; r < kRowRuns; ++r) {  // 0 for a run without positions (or a block)
        f[r] = m > -INFINITY ? exp2f(sm_m[r * HQ + h] - m) : 0.f;
        l += f[r] * sm_l[r * HQ + h];
    }
    const int64_t part = (int64_t(b) * p.q_heads + head0 * G + h) * p.n_splits + split;
#pragma unroll
    for (int k = 0; k < PER_THREAD; ++k) {
        float o = 0.f;
#pragma unroll
        for (int r = 0; r < kRowRuns; ++r) o += f[r] * sm_o[(r * HQ + h) * (DV + 1) + v0 + k];
        p.o[part * DV + v0 + k] = o;
    }
    if (v0 == 0) {
        p.m[part] = m;
        p.l[part] = l;
    }
}

// ---- instances and the host-side match ---------------------------------------------------

template <class S>
bool matches(const caramba_cuda_decode_params& p, int dg) {
    return p.kv_heads % S::HKV == 0 && p.q_heads == S::G * p.kv_heads && p.k_sem.dim == S::dim(0) &&
           dg == S::dim(1) && p.v.dim == S::DV;
}

int64_t block_bytes(int format) { return format == CARAMBA_FORMAT_Q4_0 ? 18 : 34; }

// Every step of a tensor starts on 16 bytes (cp.async): base and sequence (and head) strides.
bool aligned16(const caramba_cuda_cache& t, int64_t head_stride) {
    return reinterpret_cast<uintptr_t>(t.data) % 16 == 0 && t.batch_stride % 16 == 0 &&
           head_stride % 16 == 0;
}

enum class Rows { unserved, heads, tokens };

// Dense key rows: every KV head in one row (token layout: value g * dim + i of the row at
// data + t * row bytes), or one head's whole blocks per row (head layout).
Rows key_rows(const caramba_cuda_cache& t, int kv_heads) {
    const int64_t block = block_bytes(t.format);
    const bool shifted = t.head_stride == 0 && t.head_shift == t.dim;
    const bool blocked = t.head_shift == 0 && t.dim % 32 == 0 && t.head_stride == t.dim / 32 * block;
    const int64_t values = int64_t(kv_heads) * t.dim;
    if ((shifted || blocked) && values % 32 == 0 && t.token_stride == values / 32 * block &&
        aligned16(t, 0))
        return Rows::tokens;
    if (t.head_shift == 0 && t.dim % 32 == 0 && t.token_stride == t.dim / 32 * block &&
        aligned16(t, t.head_stride))
        return Rows::heads;
    return Rows::unserved;
}

// Dense value rows: one head's (head layout) or every head's (token layout) per position.
Rows value_rows(const caramba_cuda_cache& v, int kv_heads) {
    const int64_t row = v.dim / 32 * block_bytes(v.format);
    if (v.head_stride == row && v.token_stride == kv_heads * row && aligned16(v, 0))
        return Rows::tokens;
    if (v.token_stride == row && aligned16(v, v.head_stride)) return Rows::heads;
    return Rows::unserved;
}

template <class S>
RowKernel launchable(const caramba_cuda_decode_params& p) {
    return {decode_rows_kernel<S>, S::SMEM, p.kv_heads / S::HKV, S::WARPS};
}

// The instance of this head shape and layout in p's formats, if p has that shape.
// SUB4: 16-position steps per staged slot where keys and values are all q4_0 (others take 1).
template <int G, int HKV, int DS, int DG, int NBV, bool KTOKEN, bool VTOKEN, int TEAM, int SUB4 = 1>
RowKernel instance(const caramba_cuda_decode_params& p, int dg) {
    constexpr int Q4 = CARAMBA_FORMAT_Q4_0, Q8 = CARAMBA_FORMAT_Q8_0;
    if (!matches<Shape<Q4, Q4, G, HKV, DS, DG, NBV, VTOKEN, KTOKEN, TEAM>>(p, dg)) return {};
    // A token row holds every KV head: only head-layout tensors split into groups of HKV.
    if ((KTOKEN || VTOKEN) && p.kv_heads != HKV) return {};
    const bool k4 = p.k_sem.format == Q4, v4 = p.v.format == Q4;
    if (k4 && v4) return launchable<Shape<Q4, Q4, G, HKV, DS, DG, NBV, VTOKEN, KTOKEN, TEAM, SUB4>>(p);
    if (k4) return launchable<Shape<Q4, Q8, G, HKV, DS, DG, NBV, VTOKEN, KTOKEN, TEAM>>(p);
    if (v4) return launchable<Shape<Q8, Q4, G, HKV, DS, DG, NBV, VTOKEN, KTOKEN, TEAM>>(p);
    return launchable<Shape<Q8, Q8, G, HKV, DS, DG, NBV, VTOKEN, KTOKEN, TEAM>>(p);
}

}  // namespace

// KV heads per warp for standard attention over head-layout caches: the 8 of a token row need
// 255 registers a lane (two blocks an SM); 2 take 114-127 (four blocks). H200, batch 8 x 32k,
// us, q4_0 / q8_0: 8 heads 55.2 / 87.7, 2 heads 47.6 / 78.1.
constexpr int kStdHeads = 2;

// Cached positions per call (batch * capacity) from which AUTO picks the row kernel for an
// instance with one group of KV heads (a token row) unless every tensor is q4_0. Its blocks
// split a sequence into runs of >= 512 positions, so smaller calls leave most SMs idle; the
// per-KV-head kernel's eight warps per split fill them, which pays off for q8_0 only. H200, one
// layer, DBA, us, rows vs per-KV-head (benchmarks/results/kernels_gpu.md, cudarows_* /
// cudaheads_*), q8_0: batch 1 x 4k 12.1 vs 9.7, batch 8 x 4k 13.0 vs 11.5, batch 1 x 32k 13.1
// vs 12.8, batch 8 x 8k 14.2 vs 17.0, batch 1 x 64k 14.8 vs 18.4; q4_0: batch 1 x 4k 10.1 vs
// 10.9, batch 8 x 4k 11.2 vs 12.4, batch 1 x 32k 11.5 vs 13.7, batch 8 x 8k 12.0 vs 18.1.
// Grouped head-layout instances have blocks per KV-head group too, and win at every size
// measured (batch 1 x 4k: 10.6 / 10.1 vs 15.1 / 13.3).
constexpr int64_t kRowMinPositions = 65536;

RowKernel row_kernel(const caramba_cuda_decode_params& p) {
    if (p.kernel == CARAMBA_CUDA_KERNEL_HEADS) return {};
    const bool small = p.kernel == CARAMBA_CUDA_KERNEL_AUTO && int64_t(p.batch) * p.s_max < kRowMinPositions;
    const bool dba = p.q_geo != nullptr;
    const int dg = dba ? p.k_geo.dim : 0;
    const Rows keys = key_rows(p.k_sem, p.kv_heads), values = value_rows(p.v, p.kv_heads);
    if (keys == Rows::unserved || (dba && key_rows(p.k_geo, p.kv_heads) != keys) ||
        values == Rows::unserved)
        return {};
    // The instances (benchmarks/kernels_gpu.py), both at Llama-3.2-1B widths, 32 query / 8 KV
    // heads: the seed's DBA cache, per KV head 4 semantic + 8 geometric key values in token
    // rows and 32 values (sem 128, geo 256, v 256 over the heads); standard attention, head dim
    // 64 in the head layout (the per-KV-head kernel's 16-bit global loads leave HBM idle).
    // The DBA instance runs teams of 2 warps. H200, one layer, us, teams of 1 -> 2 (same run):
    // q4_0 batch 8 x 32k 25.3 -> 24.6, 64k 39.4 -> 41.9; q8_0 32k 37.1 -> 32.8, 64k 62.3 ->
    // 57.7; q4_0 batch 1 x 64k 14.2 -> 12.8, batch 8 x 8k 13.5 -> 12.0. Only q4_0 at 64k loses:
    // a team keeps one step in flight, so 2/3 of the bytes a wave of single warps did.
    // All-q4_0 caches stage 2 steps (32 positions) a slot: one barrier, one wait and one set of
    // copy addresses per 32 positions, and twice the bytes in flight (H200, us, 1 -> 2 steps a
    // slot, same run: batch 8 x 32k 24.1 -> 23.1, 64k 40.8 -> 38.2, batch 1 x 64k 12.7 -> 12.2,
    // batch 8 x 8k 11.9 -> 11.5). q8_0 keeps 1: 32.7 -> 33.4 at 32k, 57.4 -> 60.4 at 64k.
    const bool value_tokens = values == Rows::tokens;
    if (keys == Rows::tokens) {
        const bool all_q4 = p.k_sem.format == CARAMBA_FORMAT_Q4_0 && p.v.format == CARAMBA_FORMAT_Q4_0 &&
                            (!dba || p.k_geo.format == CARAMBA_FORMAT_Q4_0);
        if (small && !all_q4) return {};
        return value_tokens ? instance<4, 8, 4, 8, 1, true, true, 2, 2>(p, dg)
                            : instance<4, 8, 4, 8, 1, true, false, 2, 2>(p, dg);
    }
    if (value_tokens) return small ? RowKernel{} : instance<4, 8, 64, 0, 2, false, true, 1>(p, dg);
    // Head-layout keys and values: kStdHeads KV heads per warp, blocks per group of them; head
    // dim 128 (Llama-3-8B and its kin) too, which the per-KV-head kernel does not serve.
    if (p.k_sem.dim == 128) return instance<4, kStdHeads, 128, 0, 4, false, false, 1>(p, dg);
    return instance<4, kStdHeads, 64, 0, 2, false, false, 1>(p, dg);
}

}  // namespace caramba_cuda
