/* gaussians.c compiled for AVX2 + FMA, as gm_gaussian_sum_avx2 (called by
 * dispatch.c only on CPUs that have both). */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx2,fma")
#elif defined(__x86_64__) && defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#endif

#define GM_VARIANT avx2
#include "gaussians.c"

#if defined(__x86_64__) && defined(__clang__)
#pragma clang attribute pop
#endif

#if defined(__AVX2__) && defined(__FMA__)
const int gm_avx2_compiled = 1;
#else
const int gm_avx2_compiled = 0;
#endif
