/* Test harness (kdlib/assets/mcu/harness.c): reads int8 images from a file, runs the generated
 * model on each and prints its int8 outputs, one line per image. The same file builds for the
 * host (gcc; the file is argv[1]) and for a Cortex-M under QEMU (KD_FIRMWARE: the C library
 * reaches the host's files and stdout through semihosting; the file is inputs.bin in QEMU's
 * working folder). The firmware also measures the stack that one inference uses: it fills the
 * unused stack with a pattern, runs the model, and finds the deepest word that changed. */
#include <stdint.h>
#include <stdio.h>

#define KD_HARNESS
int8_t *kd_input(void);
const int8_t *kd_run(void);
extern const int kd_input_size, kd_output_size;

#ifdef KD_FIRMWARE
extern void initialise_monitor_handles(void);
extern uint32_t __StackLimit;
#define KD_PAINT 0xA5A5A5A5u
#define KD_SPIN 1000000u

/* SysTick, the Cortex-M's 24-bit down-counter, on the processor clock. */
#define KD_SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define KD_SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define KD_SYST_CVR (*(volatile uint32_t *)0xE000E018u)

/* 2 n instructions (subs, bne): the known count that calibrates SysTick ticks to instructions. */
static void kd_spin(uint32_t n)
{
#ifdef __thumb2__
    __asm__ volatile("1: subs %0, %0, #1\n\tbne 1b" : "+r"(n) : : "cc");
#else   /* Thumb-1 (Cortex-M0), where GCC's inline assembly uses the divided syntax */
    __asm__ volatile("1: sub %0, #1\n\tbne 1b" : "+l"(n) : : "cc");
#endif
}

static uint32_t kd_ticks_of_spin(uint32_t n)
{
    KD_SYST_RVR = 0xFFFFFFu;
    KD_SYST_CVR = 0;
    KD_SYST_CSR = 5u;
    uint32_t start = KD_SYST_CVR;
    kd_spin(n);
    uint32_t ticks = (start - KD_SYST_CVR) & 0xFFFFFFu;
    KD_SYST_CSR = 0;
    return ticks;
}

/* Run the model once (it overwrites its input: the arena is reused), measuring its stack and
 * the SysTick ticks it takes (under QEMU with -icount shift=0, one instruction = 1 ns of
 * virtual time, so ticks x (1e9 / clock) counts instructions, not cycles). */
static const int8_t *kd_run_measured(uint32_t *stack_bytes, uint32_t *ticks)
{
    uintptr_t sp;
    uint32_t *p;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (p = &__StackLimit; (uintptr_t)p < sp - 64; p++) *p = KD_PAINT;   /* paint below this frame */
    KD_SYST_RVR = 0xFFFFFFu;
    KD_SYST_CVR = 0;
    KD_SYST_CSR = 5u;                                                    /* enable, processor clock */
    uint32_t start = KD_SYST_CVR;
    const int8_t *y = kd_run();
    *ticks = (start - KD_SYST_CVR) & 0xFFFFFFu;
    KD_SYST_CSR = 0;
    for (p = &__StackLimit; *p == KD_PAINT; p++) {}
    extern uint32_t __StackTop;
    *stack_bytes = (uint32_t)((uintptr_t)&__StackTop - (uintptr_t)p);
    return y;
}
#endif

int main(int argc, char **argv)
{
#ifdef KD_FIRMWARE
    initialise_monitor_handles();
#endif
    const char *path = argc > 1 ? argv[1] : "inputs.bin";
    FILE *f = fopen(path, "rb");
    if (!f) { printf("error: cannot open %s\n", path); return 2; }
    int n = 0;
    while (fread(kd_input(), 1, (size_t)kd_input_size, f) == (size_t)kd_input_size) {
        const int8_t *y;
#ifdef KD_FIRMWARE
        uint32_t stack_bytes, ticks;
        if (n == 0) {
            y = kd_run_measured(&stack_bytes, &ticks);
            printf("stack_bytes %lu\nsystick_ticks %lu\nspin_instructions %lu\nspin_ticks %lu\n",
                   (unsigned long)stack_bytes, (unsigned long)ticks, 2ul * KD_SPIN, (unsigned long)kd_ticks_of_spin(KD_SPIN));
        } else
#endif
            y = kd_run();
        for (int i = 0; i < kd_output_size; i++) printf(i ? " %d" : "%d", y[i]);
        printf("\n");
        n++;
    }
    fclose(f);
    printf("images %d\n", n);
    return 0;
}
