/* Minimal start-up for a Cortex-M (kdlib/assets/mcu/startup.c): the vector table, and a reset
 * handler that copies .data from flash to RAM, zeroes .bss and calls main. The symbols come from
 * board.ld. Any fault ends the program through semihosting (QEMU exits with status 255), so that a
 * crash is reported instead of hanging the emulator. */
#include <stdint.h>

extern uint32_t __etext, __data_start__, __data_end__, __bss_start__, __bss_end__, __StackTop;
int main(int argc, char **argv);
void kd_semihost_exit(int status);

void Reset_Handler(void)
{
    uint32_t *src = &__etext, *dst = &__data_start__;
    while (dst < &__data_end__) *dst++ = *src++;
    for (dst = &__bss_start__; dst < &__bss_end__;) *dst++ = 0;
    kd_semihost_exit(main(0, 0));
}

void Fault_Handler(void) { kd_semihost_exit(255); }

/* SYS_EXIT_EXTENDED (0x20): QEMU exits with `status` (ADP_Stopped_ApplicationExit = 0x20026). */
void kd_semihost_exit(int status)
{
    uint32_t block[2] = {0x20026, (uint32_t)status};
    register uint32_t r0 __asm__("r0") = 0x20;
    register uint32_t *r1 __asm__("r1") = block;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    for (;;) {}
}

__attribute__((section(".isr_vector"), used))
void (*const kd_vectors[16])(void) = {
    (void (*)(void))&__StackTop, Reset_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, 0, 0, 0, 0, Fault_Handler, Fault_Handler, 0, Fault_Handler, Fault_Handler,
};
