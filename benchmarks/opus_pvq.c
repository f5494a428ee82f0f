/* Timing harness for libopus's own PVQ functions (the speed reference of issue 15).
 *
 * Links the system's static libopus.a (Debian package libopus-dev) and calls its internal
 * search (op_pvq_search_c, op_pvq_search_sse2) and its enumeration with range coding
 * (encode_pulses, decode_pulses) on groups read from a file; no Opus source is copied here,
 * only the prototypes of the library's functions (float build: celt_norm = float).
 *
 *   opus_pvq GROUPS.f32 L K CODE POINTS_C.i32 POINTS_SSE2.i32
 *
 * GROUPS.f32: G x L float32 unit vectors (Opus codes unit-norm bands). CODE = 1 also times
 * encode and decode (indices of at most 32 bits) and checks that decode returns the search's
 * points. Prints one JSON object of rates in weights per CPU-second of this process, best
 * of 5, one thread; writes both searches' points for the caller to compare.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

float op_pvq_search_c(float *X, int *iy, int K, int N, int arch);
float op_pvq_search_sse2(float *X, int *iy, int K, int N, int arch);
void encode_pulses(const int *y, int n, int k, void *enc);
float decode_pulses(int *y, int n, int k, void *dec);
void ec_enc_init(void *enc, unsigned char *buf, unsigned size);
void ec_enc_done(void *enc);
void ec_dec_init(void *dec, unsigned char *buf, unsigned size);

static double cpu_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void write_points(const char *path, const int *y, long n) {
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(y, 4, n, f) != (size_t)n) { perror(path); exit(1); }
  fclose(f);
}

int main(int argc, char **argv) {
  if (argc != 7) { fprintf(stderr, "usage: opus_pvq GROUPS.f32 L K CODE POINTS_C POINTS_SSE2\n"); return 1; }
  int L = atoi(argv[2]), K = atoi(argv[3]), code = atoi(argv[4]), repeats = 5;
  FILE *f = fopen(argv[1], "rb");
  if (!f) { perror(argv[1]); return 1; }
  fseek(f, 0, SEEK_END);
  long n = ftell(f) / 4, G = n / L;
  rewind(f);
  /* the SSE2 search reads up to 3 floats past a group: pad the buffers */
  float *X = malloc(n * 4), *T = malloc(n * 4 + 64);
  int *Yc = malloc(n * 4 + 64), *Ys = malloc(n * 4 + 64), *D = malloc(n * 4);
  unsigned char *buf = malloc(G * 8 + 64);
  static long long coder[64];              /* ec_ctx, opaque here (about 56 bytes) */
  if (fread(X, 4, n, f) != (size_t)n || n % L) { fprintf(stderr, "bad groups file\n"); return 1; }
  double best[4] = {1e30, 1e30, 1e30, 1e30};
  for (int r = 0; r < repeats; r++) {
    for (int v = 0; v < 2; v++) {          /* the search overwrites X: search a copy */
      memcpy(T, X, n * 4);
      double t = cpu_seconds();
      for (long g = 0; g < G; g++) {
        if (v) op_pvq_search_sse2(T + g * L, Ys + g * L, K, L, 0);
        else op_pvq_search_c(T + g * L, Yc + g * L, K, L, 0);
      }
      t = cpu_seconds() - t;
      if (t < best[v]) best[v] = t;
    }
    if (code) {
      double t = cpu_seconds();
      ec_enc_init(coder, buf, G * 8 + 64);
      for (long g = 0; g < G; g++) encode_pulses(Yc + g * L, L, K, coder);
      ec_enc_done(coder);
      t = cpu_seconds() - t;
      if (t < best[2]) best[2] = t;
      t = cpu_seconds();
      ec_dec_init(coder, buf, G * 8 + 64);
      for (long g = 0; g < G; g++) decode_pulses(D + g * L, L, K, coder);
      t = cpu_seconds() - t;
      if (t < best[3]) best[3] = t;
      if (memcmp(D, Yc, n * 4)) { fprintf(stderr, "decode_pulses did not return the points\n"); return 2; }
    }
  }
  printf("{\"L\": %d, \"K\": %d, \"groups\": %ld, \"search_c\": %.6g, \"search_sse2\": %.6g",
         L, K, G, n / best[0], n / best[1]);
  if (code) printf(", \"encode\": %.6g, \"decode\": %.6g", n / best[2], n / best[3]);
  printf("}\n");
  write_points(argv[5], Yc, n);
  write_points(argv[6], Ys, n);
  return 0;
}
