// Throughput of the FP64 MMA shapes on sm_90 and a check of the m16n8k16 fragment layout that
// kernels/reference.cu relies on. Not part of the build: `nvcc -arch=sm_90 -O3 benches/dmma_shapes.cu
// -o dmma && ./dmma` on a GPU machine (docs/gpu-validation.md, run G7).
#include <cstdio>
#include <cstdlib>
#include <cmath>
__global__ void k884(int iters, double* out) {
    double d[8][2] = {};
    double a = threadIdx.x * 1e-3, b = 1.0 + threadIdx.x * 1e-4;
    for (int it = 0; it < iters; it++) {
#pragma unroll
        for (int c = 0; c < 8; c++)
            asm volatile("mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64 {%0,%1}, {%2}, {%3}, {%0,%1};"
                         : "+d"(d[c][0]), "+d"(d[c][1]) : "d"(a), "d"(b));
    }
    double s = 0; for (int c = 0; c < 8; c++) s += d[c][0] + d[c][1];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
__global__ void k16816(int iters, double* out) {
    double d[4][4] = {};
    double a[8], b[4];
    for (int i = 0; i < 8; i++) a[i] = threadIdx.x * 1e-3 + i;
    for (int i = 0; i < 4; i++) b[i] = 1.0 + threadIdx.x * 1e-4 + i;
    for (int it = 0; it < iters; it++) {
#pragma unroll
        for (int c = 0; c < 4; c++)
            asm volatile("mma.sync.aligned.m16n8k16.row.col.f64.f64.f64.f64 {%0,%1,%2,%3}, {%4,%5,%6,%7,%8,%9,%10,%11}, {%12,%13,%14,%15}, {%0,%1,%2,%3};"
                         : "+d"(d[c][0]), "+d"(d[c][1]), "+d"(d[c][2]), "+d"(d[c][3])
                         : "d"(a[0]), "d"(a[1]), "d"(a[2]), "d"(a[3]), "d"(a[4]), "d"(a[5]), "d"(a[6]), "d"(a[7]),
                           "d"(b[0]), "d"(b[1]), "d"(b[2]), "d"(b[3]));
    }
    double s = 0; for (int c = 0; c < 4; c++) for (int j = 0; j < 4; j++) s += d[c][j];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
__global__ void k1688(int iters, double* out) {
    double d[4][4] = {};
    double a[4], b[2];
    for (int i = 0; i < 4; i++) a[i] = threadIdx.x * 1e-3 + i;
    for (int i = 0; i < 2; i++) b[i] = 1.0 + threadIdx.x * 1e-4 + i;
    for (int it = 0; it < iters; it++) {
#pragma unroll
        for (int c = 0; c < 4; c++)
            asm volatile("mma.sync.aligned.m16n8k8.row.col.f64.f64.f64.f64 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                         : "+d"(d[c][0]), "+d"(d[c][1]), "+d"(d[c][2]), "+d"(d[c][3])
                         : "d"(a[0]), "d"(a[1]), "d"(a[2]), "d"(a[3]), "d"(b[0]), "d"(b[1]));
    }
    double s = 0; for (int c = 0; c < 4; c++) for (int j = 0; j < 4; j++) s += d[c][j];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
// Layout check: A 16x16 row-major, B 16x8 (B[k][n]), assumed fragments:
// a[i]: row g + 8*(i&1), col t + 4*(i>>1); b[i]: row(k) t + 4*i, col g; d[i]: row g + 8*(i>>1), col 2t + (i&1).
__global__ void layout(const double* A, const double* B, double* D) {
    int l = threadIdx.x, g = l >> 2, t = l & 3;
    double a[8], b[4], d[4] = {0, 0, 0, 0};
    for (int i = 0; i < 8; i++) a[i] = A[(g + 8 * (i & 1)) * 16 + t + 4 * (i >> 1)];
    for (int i = 0; i < 4; i++) b[i] = B[(t + 4 * i) * 8 + g];
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f64.f64.f64.f64 {%0,%1,%2,%3}, {%4,%5,%6,%7,%8,%9,%10,%11}, {%12,%13,%14,%15}, {%0,%1,%2,%3};"
                 : "+d"(d[0]), "+d"(d[1]), "+d"(d[2]), "+d"(d[3])
                 : "d"(a[0]), "d"(a[1]), "d"(a[2]), "d"(a[3]), "d"(a[4]), "d"(a[5]), "d"(a[6]), "d"(a[7]),
                   "d"(b[0]), "d"(b[1]), "d"(b[2]), "d"(b[3]));
    for (int i = 0; i < 4; i++) D[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = d[i];
}
int main() {
    double* out; cudaMalloc(&out, 132 * 8 * 256 * sizeof(double));
    cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
    int iters = 20000, blocks = 132 * 4, threads = 256;
    for (int rep = 0; rep < 2; rep++) {
        float ms;
        cudaEventRecord(e0); k884<<<blocks, threads>>>(iters, out); cudaEventRecord(e1); cudaEventSynchronize(e1);
        cudaEventElapsedTime(&ms, e0, e1);
        double fl = 2.0 * 256 * 8 * (double)iters * blocks * (threads / 32);
        printf("m8n8k4  : %.1f TFLOP/s\n", fl / ms / 1e9);
        cudaEventRecord(e0); k1688<<<blocks, threads>>>(iters, out); cudaEventRecord(e1); cudaEventSynchronize(e1);
        cudaEventElapsedTime(&ms, e0, e1);
        fl = 2.0 * 1024 * 4 * (double)iters * blocks * (threads / 32);
        printf("m16n8k8 : %.1f TFLOP/s\n", fl / ms / 1e9);
        cudaEventRecord(e0); k16816<<<blocks, threads>>>(iters, out); cudaEventRecord(e1); cudaEventSynchronize(e1);
        cudaEventElapsedTime(&ms, e0, e1);
        fl = 2.0 * 2048 * 4 * (double)iters * blocks * (threads / 32);
        printf("m16n8k16: %.1f TFLOP/s\n", fl / ms / 1e9);
    }
    double hA[256], hB[128], hD[128], *dA, *dB, *dD;
    for (int i = 0; i < 256; i++) hA[i] = (double)(rand() % 1000) / 7.0;
    for (int i = 0; i < 128; i++) hB[i] = (double)(rand() % 1000) / 11.0;
    cudaMalloc(&dA, sizeof hA); cudaMalloc(&dB, sizeof hB); cudaMalloc(&dD, sizeof hD);
    cudaMemcpy(dA, hA, sizeof hA, cudaMemcpyHostToDevice); cudaMemcpy(dB, hB, sizeof hB, cudaMemcpyHostToDevice);
    layout<<<1, 32>>>(dA, dB, dD); cudaMemcpy(hD, dD, sizeof hD, cudaMemcpyDeviceToHost);
    double worst = 0;
    for (int m = 0; m < 16; m++) for (int n = 0; n < 8; n++) {
        double s = 0; for (int k = 0; k < 16; k++) s += hA[m * 16 + k] * hB[k * 8 + n];
        worst = fmax(worst, fabs(s - hD[m * 8 + n]) / fabs(s));
    }
    printf("m16n8k16 layout: worst rel err %g (%s)\n", worst, worst < 1e-12 ? "layout as assumed" : "WRONG");
    printf("%s\n", cudaGetErrorString(cudaGetLastError()));
}
