/* readegress._speedups: the results-log scanner (_logscan.c), listed in _speedups.c's methods. */
#ifndef READEGRESS_LOGSCAN_H
#define READEGRESS_LOGSCAN_H
#include <Python.h>

PyObject *scan_results(PyObject *self, PyObject *args);
PyObject *count_newlines(PyObject *self, PyObject *args);

#endif
