/* A floating-point operation planted in a Cortex-M build, which `make check-integer-only` must catch (a
 * constructor: kept by the linker whatever calls it). PLANTED: double (soft-float calls) or float (FPU
 * instructions when compiled for a Cortex-M4F). */
#ifndef PLANTED
#define PLANTED double
#endif
volatile PLANTED planted_input = 3, planted_output;

__attribute__((constructor)) static void planted(void) { planted_output = planted_input * (PLANTED)1.5; }
