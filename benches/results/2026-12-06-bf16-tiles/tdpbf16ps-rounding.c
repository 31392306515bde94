#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <unistd.h>
#include <sys/syscall.h>
typedef struct { uint8_t p[64]; } cfg_t;
static uint16_t tobf(float f){ uint32_t u; memcpy(&u,&f,4); u += 0x7fff + ((u>>16)&1); return u>>16; }
static float fromb(uint16_t b){ uint32_t u=(uint32_t)b<<16; float f; memcpy(&f,&u,4); return f; }
static uint64_t s=88172645463325252ull; static double rnd(){ s^=s<<13; s^=s>>7; s^=s<<17; return (double)(s>>11)/9007199254740992.0; }
static float gauss(){ double u=rnd()+1e-12,v=rnd(); return (float)(sqrt(-2*log(u))*cos(6.283185307*v)); }
static float f(double x){ return (float)x; }
int main(int argc,char**argv){
  int P = atoi(argv[1]);
  syscall(SYS_arch_prctl, 0x1023, 18);
  cfg_t c; memset(&c,0,64); c.p[0]=1;
  c.p[16]=64; c.p[48]=16; c.p[18]=4*P; c.p[49]=16; c.p[20]=64; c.p[50]=P;
  _tile_loadconfig(&c);
  #define NH 6
  long mism[NH]={0}, total=0;
  for(int trial=0; trial<20000; trial++){
    static uint16_t A[16][64], B[16][32]; static float C[16][16], C0[16][16];
    for(int m=0;m<16;m++) for(int k=0;k<2*P;k++) A[m][k]=tobf(gauss());
    for(int k=0;k<P;k++) for(int j=0;j<32;j++) B[k][j]=tobf(gauss());
    for(int m=0;m<16;m++) for(int n=0;n<16;n++) C0[m][n]=gauss()*((trial%4)?1.0f:100.0f);
    _tile_loadd(0, C0, 64); _tile_loadd(1, A, 128); _tile_loadd(2, B, 64);
    _tile_dpbf16ps(0,1,2); _tile_stored(0, C, 64);
    for(int m=0;m<16;m++) for(int n=0;n<16;n++){
      double p[64]; for(int k=0;k<P;k++){ p[2*k]=(double)fromb(A[m][2*k])*fromb(B[k][2*n]); p[2*k+1]=(double)fromb(A[m][2*k+1])*fromb(B[k][2*n+1]); }
      float acc=C0[m][n];
      float h[NH];
      // H0: sequential pairs: acc = f(acc + f(p0+p1)) each pair
      { float a=acc; for(int k=0;k<P;k++) a=f((double)a + (double)f(p[2*k]+p[2*k+1])); h[0]=a; }
      // H1: sequential: acc = f(acc + p0 + p1) exact three-way per pair
      { float a=acc; for(int k=0;k<P;k++) a=f((double)a + p[2*k]+p[2*k+1]); h[1]=a; }
      // H2: pair sums rounded, tree over pairs (rounded), then + acc
      { float t[32]; int n2=P; for(int k=0;k<P;k++) t[k]=f(p[2*k]+p[2*k+1]); while(n2>1){ for(int i=0;i<n2/2;i++) t[i]=f((double)t[2*i]+t[2*i+1]); n2/=2;} h[2]=f((double)acc+t[0]); }
      // H3: pair sums rounded, summed sequentially (rounded), then + acc
      { float t=f(p[0]+p[1]); for(int k=1;k<P;k++) t=f((double)t+f(p[2*k]+p[2*k+1])); h[3]=f((double)acc+t); }
      // H4: all products exact sum, rounded, + acc
      { double t=0; for(int k=0;k<2*P;k++) t+=p[k]; h[4]=f((double)acc+(double)f(t)); }
      // H5: products exact summed, then + acc exact, one rounding
      { double t=acc; for(int k=0;k<2*P;k++) t+=p[k]; h[5]=f(t); }
      total++;
      for(int i=0;i<NH;i++) if(C[m][n]!=h[i]) mism[i]++;
    }
  }
  printf("P=%d total %ld:", P, total); for(int i=0;i<NH;i++) printf(" H%d %ld",i,mism[i]); printf("\n");
  _tile_release();
}
