/* The least a Cortex-M needs to run the example under semihosting: a vector table whose reset handler enters
 * newlib's _start (librdimon's crt0: stack, .bss, argv from the debugger, main, exit through semihosting).
 * For the MPS2 boards QEMU emulates (mps2-an386: Cortex-M4), linked by mps2.ld. */
#include <stdint.h>

extern uint32_t __stack;
extern void _start(void);

static void halt(void) {
    for (;;) {
    }
}

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))(&__stack), _start, halt, halt, halt, halt, halt, 0, 0, 0, 0, halt, halt, 0, halt, halt,
};
