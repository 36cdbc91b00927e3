/* LD_PRELOAD shim: the process sees an AVX2 CPU. CPUID faults (arch_prctl ARCH_SET_CPUID) and the handler answers
 * with the real values minus AVX-512, VNNI, AVX-VNNI, BF16 and AMX. Inherited by threads; re-armed after execve
 * through LD_PRELOAD. */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static long set_cpuid(int enabled) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, (unsigned long)enabled); }

#define EBX7_HIDE ((1u<<16)|(1u<<17)|(1u<<21)|(1u<<26)|(1u<<27)|(1u<<28)|(1u<<30)|(1u<<31))
#define ECX7_HIDE ((1u<<1)|(1u<<6)|(1u<<11)|(1u<<12)|(1u<<14))
#define EDX7_HIDE ((1u<<2)|(1u<<3)|(1u<<8)|(1u<<22)|(1u<<23)|(1u<<24)|(1u<<25))
#define EAX71_HIDE ((1u<<4)|(1u<<5))

static void on_segv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *g = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)g[REG_RIP];
    if (ip[0] == 0x0f && ip[1] == 0xa2) {
        unsigned leaf = (unsigned)g[REG_RAX], sub = (unsigned)g[REG_RCX], a, b, c, d;
        set_cpuid(1);
        __cpuid_count(leaf, sub, a, b, c, d);
        set_cpuid(0);
        if (leaf == 7 && sub == 0) { b &= ~EBX7_HIDE; c &= ~ECX7_HIDE; d &= ~EDX7_HIDE; }
        if (leaf == 7 && sub == 1) { a &= ~EAX71_HIDE; }
        g[REG_RAX] = a; g[REG_RBX] = b; g[REG_RCX] = c; g[REG_RDX] = d;
        g[REG_RIP] += 2;
        return;
    }
    signal(sig, SIG_DFL);  /* a real fault: die as without us */
    raise(sig);
}

__attribute__((constructor)) static void hide_avx512(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_segv;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &action, NULL);
    if (set_cpuid(0) != 0) { perror("hide_avx512: arch_prctl(ARCH_SET_CPUID)"); _exit(70); }
}
