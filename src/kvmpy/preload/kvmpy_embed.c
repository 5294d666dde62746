/*
 * The interpreter half of libkvmpy_preload.so: CPython, started in the client's process on
 * its first open of /dev/kvm, running kvmpy's kernel (kvmpy.preload.shim).
 *
 * Why in-process: QEMU, kvmtool and KVM's selftests keep guest RAM in private anonymous
 * mappings, which only code in their own address space can reach; kvmpy's kernel reads and
 * writes them at their user addresses, as Linux's does.
 *
 * Threads: the thread that starts the interpreter, and every thread that calls into kvmpy
 * afterwards, keeps one Python thread state for its whole life ("pinned": a first
 * PyGILState_Ensure that is only released when the thread exits).  Each call then takes the
 * GIL with PyGILState_Ensure and gives it back with PyGILState_Release, so a vCPU thread in
 * KVM_RUN and the VMM's other threads share the interpreter as Python threads do, and
 * threading.local state survives between a thread's calls.
 *
 * Signals: the interpreter installs no handlers of its own (install_signal_handlers = 0):
 * the client's handlers stay as they are.  KVM_RUN's signal handling is the kernel's own
 * (kvmpy.kernel.signals: the interrupting signals are blocked while the vCPU runs, seen
 * pending, and KVM_RUN returns EINTR).
 */
#include <Python.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "kvmpy_preload.h"

#ifndef KVMPY_PYTHON
#error "build with -DKVMPY_PYTHON=\"/path/to/the/python/that/has/kvmpy\" (kvmpy build-preload)"
#endif

__thread int kvmpy_inside;
int kvmpy_forked;

static PyObject *shim;                  /* the module kvmpy.preload.shim */
static int started;                     /* 1: the interpreter runs; -1: it failed to start */
static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_key_t unpin_key;
static __thread int pinned;

/* At a pinned thread's exit: drop its thread state (taking the GIL to do so).  By now libc
 * has cleared the thread's other keys, Python's own among them, so this goes by the state
 * itself rather than by PyGILState_Release. */
static void unpin(void *tstate)
{
    kvmpy_inside++;
    PyEval_RestoreThread(tstate);
    PyThreadState_Clear(tstate);
    PyThreadState_DeleteCurrent();          /* and releases the GIL */
    kvmpy_inside--;
}

static void forked_child(void)
{
    kvmpy_forked = 1;
}

/* This thread keeps the state it holds now; the GIL is released. */
static void pin(void)
{
    pinned = 1;
    pthread_setspecific(unpin_key, PyEval_SaveThread());
}

static int start_python(void)
{
    PyConfig config;
    PyStatus status;
    const char *python = getenv("KVMPY_PYTHON");

    if (python == NULL || *python == '\0')
        python = KVMPY_PYTHON;
    PyConfig_InitPythonConfig(&config);
    config.install_signal_handlers = 0;     /* the client's signals are its own */
    config.parse_argv = 0;
    /* The interpreter with kvmpy installed (a venv's python: its pyvenv.cfg gives the
     * site-packages), as if that program were running. */
    status = PyConfig_SetBytesString(&config, &config.program_name, python);
    if (!PyStatus_Exception(status))
        status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        fprintf(stderr, "kvmpy: cannot start Python (%s): %s\n", python,
                status.err_msg ? status.err_msg : "error");
        return -1;
    }
    shim = PyImport_ImportModule("kvmpy.preload.shim");
    if (shim == NULL) {
        fprintf(stderr, "kvmpy: cannot import kvmpy.preload.shim with %s:\n", python);
        PyErr_Print();
    }
    pthread_key_create(&unpin_key, unpin);
    pthread_atfork(NULL, NULL, forked_child);
    pin();                                  /* the main thread state stays this thread's */
    return shim == NULL ? -1 : 1;
}

/* The GIL for this thread (starting the interpreter on the first call); 0 if kvmpy is not
 * available, in which case the caller answers ENODEV. */
static int enter(PyGILState_STATE *state)
{
    kvmpy_inside++;
    if (__atomic_load_n(&started, __ATOMIC_ACQUIRE) == 0) {
        pthread_mutex_lock(&start_lock);
        if (started == 0)
            __atomic_store_n(&started, start_python(), __ATOMIC_RELEASE);
        pthread_mutex_unlock(&start_lock);
    }
    if (started < 0) {
        kvmpy_inside--;
        return 0;
    }
    if (!pinned) {
        PyGILState_Ensure();                /* this thread's state, for its lifetime */
        pin();
    }
    *state = PyGILState_Ensure();
    return 1;
}

static void leave(PyGILState_STATE state)
{
    PyGILState_Release(state);
    kvmpy_inside--;
}

/* The result of a shim function: an int, or with is_file an (int, bool) pair. */
static long result_of(PyObject *res, int *is_file)
{
    long ret;

    if (is_file != NULL) {
        if (!PyArg_ParseTuple(res, "lp", &ret, is_file))
            return -EIO;
        return ret;
    }
    ret = PyLong_AsLong(res);
    return ret == -1 && PyErr_Occurred() ? -EIO : ret;
}

/*
 * shim.NAME(*args built from FORMAT), under the GIL.  A Python exception is a bug in kvmpy:
 * its traceback is printed and the call fails with EIO, as a kernel oops ends the system
 * call; ENODEV if kvmpy could not start.
 */
static long call(const char *name, int *is_file, const char *format, ...)
{
    PyGILState_STATE state;
    PyObject *args, *res = NULL, *func;
    va_list ap;
    long ret = -EIO;

    if (is_file != NULL)
        *is_file = 0;
    if (kvmpy_forked || !enter(&state))
        return -ENODEV;
    va_start(ap, format);
    args = Py_VaBuildValue(format, ap);
    va_end(ap);
    func = PyObject_GetAttrString(shim, name);
    if (args != NULL && func != NULL)
        res = PyObject_CallObject(func, args);
    Py_XDECREF(func);
    Py_XDECREF(args);
    if (res != NULL) {
        ret = result_of(res, is_file);
        Py_DECREF(res);
    }
    if (PyErr_Occurred()) {
        fprintf(stderr, "kvmpy: internal error in %s:\n", name);
        PyErr_Print();
        ret = -EIO;
    }
    leave(state);
    return ret;
}

int kvmpy_py_open(const char *path, int flags)
{
    return (int)call("open", NULL, "(y i)", path, flags);
}

long kvmpy_py_ioctl(int fd, unsigned long request, unsigned long arg, int *is_file)
{
    return call("ioctl", is_file, "(i k k)", fd, request, arg);
}

int kvmpy_py_close(int fd)
{
    return (int)call("close", NULL, "(i)", fd);
}

int kvmpy_py_dup(int oldfd, int newfd)
{
    return (int)call("dup", NULL, "(i i)", oldfd, newfd);
}

int kvmpy_py_mmap_check(int fd, int prot, int flags)
{
    return (int)call("mmap_check", NULL, "(i i i)", fd, prot, flags);
}
