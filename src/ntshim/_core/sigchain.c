/* Sharing a fault signal with the rest of the process.  ntshim's handlers (the
 * mprotect write watch's SIGSEGV, the sync arena's SIGBUS) deal with the faults
 * that are theirs and hand every other one to the action that was installed
 * before them (faulthandler, a debugger, a garbage collector's or a JIT's own
 * write barrier, or the default action) as the kernel would have delivered it:
 * every time, with that action's signal mask and flags honoured.
 *
 * Everything here is async-signal-safe: system calls and atomics only. */
#include "core.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

int nts_sigchain_install(nts_sigchain *c)
{
    struct sigaction cur, ours;
    if (sigaction(c->sig, NULL, &cur))
        return errno;
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == c->handler)
        return 0;
    /* Publish the action we chain to before ours can run, in the slot no handler
     * is reading (a handler copies the current slot without a lock). */
    int previous = __atomic_load_n(&c->current, __ATOMIC_RELAXED), next = !previous;
    c->prev[next] = cur;
    __atomic_store_n(&c->current, next, __ATOMIC_RELEASE);
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = c->handler;
    /* SA_NODEFER: a fault inside a handler we chain to reaches us again (see
     * nts_sigchain_pass); SA_ONSTACK: a stack overflow still gets a handler. */
    ours.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART | SA_NODEFER;
    sigemptyset(&ours.sa_mask);
    if (sigaction(c->sig, &ours, NULL)) {
        int err = errno;
        __atomic_store_n(&c->current, previous, __ATOMIC_RELEASE);
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
    pid_t me = (pid_t)syscall(SYS_gettid);
    struct sigaction prev = c->prev[__atomic_load_n(&c->current, __ATOMIC_ACQUIRE)];
    /* Back here from inside the action we passed the signal to, on the same thread:
     * it re-raised the signal after putting its own predecessor back (faulthandler
     * does, and its predecessor is us when it was enabled after a watch), or it
     * faulted itself.  Its predecessor chain leads back to us: the only action left
     * is the default one. */
    for (size_t i = 0; i < NTS_SIGCHAIN_THREADS; i++)
        if (__atomic_load_n(&c->passing[i], __ATOMIC_RELAXED) == me) {
            default_action(sig, si);
            return;
        }
    if (!(prev.sa_flags & SA_SIGINFO) && prev.sa_handler == SIG_IGN) {
        if (hardware) /* an ignored fault cannot be skipped: the kernel kills */
            default_action(sig, si);
        return;
    }
    if (!(prev.sa_flags & SA_SIGINFO) && prev.sa_handler == SIG_DFL) {
        default_action(sig, si);
        return;
    }
    if (prev.sa_flags & SA_RESETHAND) { /* one delivery, then the default action */
        struct sigaction *slot = &c->prev[__atomic_load_n(&c->current, __ATOMIC_ACQUIRE)];
        slot->sa_flags &= ~(SA_SIGINFO | SA_RESETHAND);
        slot->sa_handler = SIG_DFL;
    }
    /* Run it under the mask the kernel would have set for it. */
    sigset_t mask, saved;
    mask = prev.sa_mask;
    if (!(prev.sa_flags & SA_NODEFER))
        sigaddset(&mask, sig);
    pthread_sigmask(SIG_BLOCK, &mask, &saved);
    /* Note this thread as inside the action (with more threads at once than slots,
     * the extra ones go unnoted: they only lose the re-entry check). */
    pid_t *slot = NULL;
    for (size_t i = 0; i < NTS_SIGCHAIN_THREADS && !slot; i++) {
        pid_t free_slot = 0;
        if (__atomic_compare_exchange_n(&c->passing[i], &free_slot, me, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            slot = &c->passing[i];
    }
    if (prev.sa_flags & SA_SIGINFO)
        prev.sa_sigaction(sig, si, ctx);
    else
        prev.sa_handler(sig);
    if (slot)
        __atomic_store_n(slot, 0, __ATOMIC_RELAXED);
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
}
