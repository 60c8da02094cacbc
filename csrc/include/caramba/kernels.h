/* caramba_kernels: torch-free CPU kernels for quantized KV caches (umbrella header). */
#ifndef CARAMBA_KERNELS_H
#define CARAMBA_KERNELS_H

#include "caramba/attention.h"
#include "caramba/cpu.h"
#include "caramba/quant.h"
#include "caramba/status.h"
#include "caramba/version.h"

#endif /* CARAMBA_KERNELS_H */
