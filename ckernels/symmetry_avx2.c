/* symmetry.c compiled for AVX2 + FMA, as gm_symmetry_functions_avx2 (called by
 * dispatch.c only on CPUs that have both). With AVX its vector loops are 4 wide. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
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
#include "symmetry.c"

#if defined(__x86_64__) && defined(__clang__)
#pragma clang attribute pop
#endif
