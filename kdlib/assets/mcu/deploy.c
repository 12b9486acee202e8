/* Deployment build (kdlib/assets/mcu/deploy.c): the model and nothing else, to measure what a
 * device needs: no C library, no printing. It classifies one image (the first test image, in
 * flash) and ends with the predicted class as the exit status (through semihosting under QEMU;
 * on a board you would read kd_run()'s output instead). */
#include <stdint.h>

int8_t *kd_input(void);
const int8_t *kd_run(void);
extern const int kd_input_size, kd_output_size;
extern const int8_t kd_example_input[];

int main(int argc, char **argv)
{
    (void)argc; (void)argv;
    int8_t *x = kd_input();
    for (int i = 0; i < kd_input_size; i++) x[i] = kd_example_input[i];
    const int8_t *y = kd_run();
    int best = 0;
    for (int i = 1; i < kd_output_size; i++) if (y[i] > y[best]) best = i;
    return best;
}
