// CPU emulation of the CUDA LTC kernels (tests only): compiles ltc_control/cells/csrc/ltc_kernel_cuda.cu as C++20,
// runs each thread block with real std::threads and a std::barrier for __syncthreads(), and launches kernels from
// an argument array laid out like cuLaunchKernel's kernelParams (one pointer per argument), so the Python glue that
// drives the GPU drives this too. Missing barriers show up as wrong results here; the GPU run checks the rest.
#include <barrier>
#include <cmath>
#include <cstddef>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

using std::exp;

struct LtcEmuContext {
    int tid, nt;
    long long bid;
    std::barrier<> *bar;
    void *smem;
};
static thread_local LtcEmuContext ltc_emu;

#define LTC_EMULATED 1
#define LTC_TID (ltc_emu.tid)
#define LTC_NT (ltc_emu.nt)
#define LTC_BID (ltc_emu.bid)
#define LTC_SYNC() ltc_emu.bar->arrive_and_wait()
#define LTC_DEVICE static inline
#define LTC_KERNEL static
#define LTC_SHARED_DECL
#define LTC_SMEM (ltc_emu.smem)
#define __restrict__ __restrict

#include LTC_CUDA_SOURCE

template <typename... A, std::size_t... I>
static void ltc_emu_call(void (*k)(A...), void **argv, std::index_sequence<I...>) {
    k(*static_cast<std::remove_reference_t<A> *>(argv[I])...);
}

template <typename... A>
static void ltc_emu_launch(void (*k)(A...), int grid, int threads, long shared_bytes, void **argv) {
    for (long long blk = 0; blk < grid; ++blk) {
        std::vector<double> smem(shared_bytes / sizeof(double) + 1);
        std::barrier<> bar(threads);
        std::vector<std::thread> pool;
        for (int i = 0; i < threads; ++i)
            pool.emplace_back([&, i] {
                ltc_emu = LtcEmuContext{i, threads, blk, &bar, smem.data()};
                ltc_emu_call(k, argv, std::index_sequence_for<A...>{});
            });
        for (auto &th : pool) th.join();
    }
}

#define LTC_EMU_EXPORT(NAME)                                                                       \
    extern "C" void emu_##NAME(int grid, int threads, long shared_bytes, void **argv) {            \
        ltc_emu_launch(NAME, grid, threads, shared_bytes, argv);                                   \
    }
LTC_EMU_EXPORT(ltc_cuda_forward_f32)
LTC_EMU_EXPORT(ltc_cuda_forward_f64)
LTC_EMU_EXPORT(ltc_cuda_backward_f32)
LTC_EMU_EXPORT(ltc_cuda_backward_f64)
