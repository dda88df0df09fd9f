/* Sharing a fault signal with the rest of the process.  ntshim's handlers (the
 * mprotect write watch's SIGSEGV, the sync arena's SIGBUS) deal with the faults
 * that are theirs and hand every other one to the action that was installed
 * before them (faulthandler, a debugger, a garbage collector's or a JIT's own
 * write barrier, or the default action) as the kernel would have delivered it:
 * every time, with that action's signal mask and flags honoured.
 *
 * Everything a handler runs here is async-signal-safe: system calls, atomics
 * and the nts_sigchain in static memory. */
#include "common.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

/* Replace the action we pass to.  Handlers read it under the sequence lock; the
 * signal stays blocked meanwhile on this thread, so that a handler running here
 * (a sent signal) never waits for a write it interrupted. */
static void set_prev(nts_sigchain *c, const struct sigaction *a)
{
    sigset_t one, saved;
    sigemptyset(&one);
    sigaddset(&one, c->sig);
    pthread_sigmask(SIG_BLOCK, &one, &saved);
    __atomic_store_n(&c->seq, c->seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    c->prev = *a;
    c->prev_spent = 0;
    __atomic_store_n(&c->seq, c->seq + 1, __ATOMIC_RELEASE);
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
}

static void get_prev(nts_sigchain *c, struct sigaction *a)
{
    unsigned seq;
    do {
        while ((seq = __atomic_load_n(&c->seq, __ATOMIC_ACQUIRE)) & 1)
            nts_cpu_relax();
        memcpy(a, (const void *)&c->prev, sizeof *a);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
    } while (__atomic_load_n(&c->seq, __ATOMIC_RELAXED) != seq);
}

int nts_sigchain_install(nts_sigchain *c)
{
    struct sigaction cur, ours, old;
    if (sigaction(c->sig, NULL, &cur))
        return errno;
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == c->handler)
        return 0;
    /* Publish the action we chain to before ours can run. */
    get_prev(c, &old);
    set_prev(c, &cur);
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = c->handler;
    /* SA_NODEFER: a fault inside a handler we chain to reaches us again (see
     * nts_sigchain_pass); SA_ONSTACK: a stack overflow still gets a handler. */
    ours.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART | SA_NODEFER;
    sigemptyset(&ours.sa_mask);
    if (sigaction(c->sig, &ours, NULL)) {
        int err = errno;
        set_prev(c, &old);
        return err;
    }
    return 0;
}

/* What the kernel does with a signal nobody handles: a sent one is delivered again
 * to the default action; a fault repeats when the instruction re-executes. */
static void default_action(int sig, const siginfo_t *si)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    if (si->si_code <= 0)
        raise(sig);
}

void nts_sigchain_pass(nts_sigchain *c, siginfo_t *si, void *ctx)
{
    const int sig = c->sig, hardware = si->si_code > 0;
    const pid_t me = (pid_t)syscall(SYS_gettid);
    /* Stacks grow down on every architecture ntshim builds for: a call made from
     * inside the action runs below this frame's address. */
    const uintptr_t sp = (uintptr_t)__builtin_frame_address(0);
    struct sigaction prev;
    get_prev(c, &prev);
    /* Back here from inside the action we passed the signal to, on the same thread:
     * it re-raised the signal after putting its own predecessor back (faulthandler
     * does, and its predecessor is us when it was enabled after a watch), or it
     * faulted itself.  Its predecessor chain leads back to us: the only action left
     * is the default one.  A note of this thread from a frame at or below this one
     * is stale: the action left by a jump (siglongjmp), not by returning, and this
     * is a new signal.  (A new signal taken deeper in the stack than the one the
     * action jumped out of looks like a re-entry: it gets the default action.) */
    for (size_t i = 0; i < NTS_SIGCHAIN_THREADS; i++)
        if (__atomic_load_n(&c->passing[i].tid, __ATOMIC_RELAXED) == me) {
            if (sp < c->passing[i].sp) {
                default_action(sig, si);
                return;
            }
            __atomic_store_n(&c->passing[i].tid, 0, __ATOMIC_RELAXED);
        }
    if (!(prev.sa_flags & SA_SIGINFO) && prev.sa_handler == SIG_IGN) {
        if (hardware) /* an ignored fault cannot be skipped: the kernel kills */
            default_action(sig, si);
        return;
    }
    /* SA_RESETHAND: one delivery, then the default action. */
    if ((!(prev.sa_flags & SA_SIGINFO) && prev.sa_handler == SIG_DFL) ||
        ((prev.sa_flags & SA_RESETHAND) && __atomic_exchange_n(&c->prev_spent, 1, __ATOMIC_RELAXED))) {
        default_action(sig, si);
        return;
    }
    /* Run it under the mask the kernel would have set for it. */
    sigset_t mask, saved;
    mask = prev.sa_mask;
    if (!(prev.sa_flags & SA_NODEFER))
        sigaddset(&mask, sig);
    pthread_sigmask(SIG_BLOCK, &mask, &saved);
    /* Note this thread as inside the action (with more threads at once than slots,
     * the extra ones go unnoted: they only lose the re-entry check). */
    int slot = -1;
    for (int i = 0; i < NTS_SIGCHAIN_THREADS && slot < 0; i++) {
        pid_t free_slot = 0;
        if (__atomic_compare_exchange_n(&c->passing[i].tid, &free_slot, me, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
            c->passing[i].sp = sp;
            slot = i;
        }
    }
    if (prev.sa_flags & SA_SIGINFO)
        prev.sa_sigaction(sig, si, ctx);
    else
        prev.sa_handler(sig);
    if (slot >= 0)
        __atomic_store_n(&c->passing[slot].tid, 0, __ATOMIC_RELAXED);
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
}
