/* Asks for a backend on MLXE_DEVICE_GPU and prints the status and mlxe_last_error() on stdout,
 * one per line; exits 0 whatever the status (the test judges it). Used by tests/c_abi.rs on a
 * build without a GPU backend, where the request must fail with a clear error, not abort.
 * Usage: no_gpu MODEL_PATH */
#include "mlx_engine.h"

#include <stdio.h>

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s MODEL_PATH\n", argv[0]);
    return 2;
  }
  mlxe_backend_options options;
  if (mlxe_backend_options_default(&options) != MLXE_OK) {
    fprintf(stderr, "mlxe_backend_options_default failed: %s\n", mlxe_last_error());
    return 2;
  }
  options.device = MLXE_DEVICE_GPU;
  mlxe_backend b;
  int status = mlxe_backend_new(&b, argv[1], &options);
  printf("%d\n%s\n", status, status == MLXE_OK ? "" : mlxe_last_error());
  if (status == MLXE_OK) {
    mlxe_backend_free(b);
  }
  return 0;
}
