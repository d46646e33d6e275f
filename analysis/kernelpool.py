"""A warm Jupyter kernel that executes many parameterised notebooks, one after another.

papermill starts a fresh kernel for every notebook (about 5 s on 2 cores once pandas, statsmodels,
lifelines and seaborn are imported). A :class:`WarmKernel` pays that once: it starts one kernel,
pre-imports the heavy stack (then freezes that heap out of the garbage collector's way), and
before each report wipes the user namespace (``%reset -f``),
closes every figure, restores matplotlib's rcParams, pandas options, warning filters and
``sys.path`` to the state right after warm-up, and moves the kernel into the report's own work
folder. Notebooks are executed with :class:`nbclient.NotebookClient` re-using the kernel client.

What a reset cannot undo: state a notebook stores inside an imported module (a module-level cache,
a monkey-patch). Report notebooks must keep their state in the notebook namespace. The batch test
suite renders site A then site B on one kernel and checks nothing of A reaches B.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.manager import AsyncKernelManager
from nbformat import NotebookNode
from traitlets import CaselessStrEnum, default

#: Modules imported once per kernel (missing ones are skipped silently).
PRELOAD_MODULES = (
    "numpy",
    "pandas",
    "scipy.stats",
    "matplotlib.pyplot",
    "seaborn",
    "statsmodels.api",
    "statsmodels.formula.api",
    "lifelines",
    "pyarrow.parquet",
    "analysis",
    "analysis.plotting",
    "analysis.reporting",
    "analysis.privacy",
    "analysis.report_sections",
    "analysis.measures",
    "analysis.its",
    "analysis.pooling",
    "analysis.spc",
    "analysis.survival",
    "analysis.competing",
    "analysis.riskadj",
    "analysis.impact",
    "analysis.processes",
    "great_tables",
    "IPython.display",
)

INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
#: Environment variables that size the thread pools of numpy/scipy's BLAS and OpenMP code.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

_WARMUP = """
import importlib as _importlib, sys as _sys, types as _types, warnings as _warnings, copy as _copy
for _name in {modules!r}:
    try:
        _importlib.import_module(_name)
    except Exception:
        pass
%matplotlib inline
import matplotlib as _mpl
try:
    from analysis.plotting import set_theme as _set_theme
    _set_theme()
except Exception:
    pass
_state = _types.ModuleType("_ipso_kernel_state")
_state.rc = _copy.deepcopy(dict(_mpl.rcParams))
_state.filters = list(_warnings.filters)
_state.path = list(_sys.path)
_sys.modules["_ipso_kernel_state"] = _state
# The warm-up heap (every imported module, function and class) moves to gc's permanent
# generation: the gc.collect() of each %reset and the automatic full collections during a
# report then skip it (0.15 s per reset and more during execution, on this stack).
import gc as _gc
_gc.collect()
_gc.freeze()
"""

_RESET = """
import os as _os
_os.chdir({workdir!r})  # first: the previous report's folder may have been deleted
import sys as _sys, warnings as _warnings
_st = _sys.modules["_ipso_kernel_state"]
import matplotlib as _mpl, matplotlib.pyplot as _plt
_plt.close("all")
with _warnings.catch_warnings():
    _warnings.simplefilter("ignore")
    _mpl.rcParams.update(_st.rc)
    try:
        import pandas as _pd
        _pd.reset_option("all")
    except Exception:
        pass
_warnings.filters[:] = _st.filters
_sys.path[:] = _st.path
%reset -f
"""


# kernel folders (prefix, listing, sweeping) live in a module without Jupyter imports, so that a
# no-change run can sweep them without importing nbformat/jupyter_client (about 2 s)
from .kernel_dirs import KERNEL_DIR_PREFIX, _pid_alive, kernel_dirs, sweep_kernel_dirs  # noqa: F401


class IpcKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel talks over Unix domain sockets (IPC transport) in a private
    0700 temporary folder, never over TCP.

    Report kernels always run on the machine of their worker, so there is no reason to open TCP
    ports: with IPC no other machine can reach the kernel, other users can't open its sockets, and
    ipykernel has no reason to print "Kernel is running over TCP without encryption" at every
    start. The folder (``ipso-kernel-<owner pid>-*``) holds the sockets AND the connection file,
    so removing it removes every trace of the kernel: :meth:`cleanup_ipc_folder` (called by
    :meth:`WarmKernel.shutdown`), at garbage collection or interpreter exit, and, for a process
    that was killed, :func:`sweep_kernel_dirs`. Used by :class:`WarmKernel` and, as papermill's
    ``kernel_manager_class``, by :func:`analysis.render.execute_notebook`.
    """

    transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        if self.transport == "ipc":
            folder = self._ipc_folder()
            if not self.connection_file:
                self.connection_file = os.path.join(folder, "kernel.json")

    def _ipc_folder(self) -> str:
        folder = getattr(self, "_ipso_folder", None)
        if folder is None:
            # a short absolute path: Unix socket paths are limited to about 107 bytes
            folder = tempfile.mkdtemp(prefix=f"{KERNEL_DIR_PREFIX}{os.getpid()}-")
            self._ipso_folder = folder
            self._ipso_finalizer = weakref.finalize(self, shutil.rmtree, folder, True)
        return folder

    @default("ip")
    def _ip_default(self) -> str:
        if self.transport != "ipc":
            return super()._ip_default()
        return os.path.join(self._ipc_folder(), "k")

    def cleanup_ipc_folder(self) -> None:
        """Remove the folder with the sockets and the connection file (safe to call twice)."""
        fin = getattr(self, "_ipso_finalizer", None)
        if fin is not None:
            fin()


class ReportExecutionError(RuntimeError):
    """A report notebook raised; carries the partly executed notebook for debugging."""

    def __init__(self, message: str, notebook: NotebookNode | None):
        super().__init__(message)
        self.notebook = notebook


@dataclass
class WarmKernel:
    """One Jupyter kernel kept warm across reports.

    kernel_name: Jupyter kernel to start ("python3": the interpreter this package runs in).
    timeout: seconds a single cell may run before the report fails.
    startup_timeout: seconds to wait for the kernel to come up.
    threads: threads of the kernel's numerical libraries (OpenBLAS, MKL, OpenMP); None leaves
        them alone. A batch of several kernels sets cores // workers: with a multi-threaded BLAS
        in every kernel the kernels fight over the cores (the collaborative report ran twice as
        long on 2 cores). Variables the caller already set are kept.
    """

    kernel_name: str = "python3"
    timeout: int = 600
    startup_timeout: int = 120
    preload: tuple[str, ...] = PRELOAD_MODULES
    log_path: str | None = None
    threads: int | None = None
    km: Any = field(default=None, init=False, repr=False)
    kc: Any = field(default=None, init=False, repr=False)
    reports_run: int = field(default=0, init=False)
    startup_seconds: float = field(default=0.0, init=False)

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> WarmKernel:
        """Start the kernel and pre-import the heavy stack (idempotent)."""
        if self.alive:
            return self
        self.shutdown()
        t0 = time.perf_counter()
        self.km = IpcKernelManager(kernel_name=self.kernel_name)
        env = dict(os.environ)
        env["MPLBACKEND"] = INLINE_BACKEND  # figures must become outputs, whatever the caller set
        if self.threads is not None:
            for var in THREAD_VARIABLES:
                env.setdefault(var, str(max(1, int(self.threads))))
        # the kernel exits when this process dies, even by kill -9 (ipykernel's parent poller)
        env["JPY_PARENT_PID"] = str(os.getpid())
        warm = nbformat.v4.new_notebook(
            cells=[nbformat.v4.new_code_cell(_WARMUP.format(modules=list(self.preload)))]
        )
        client = self._client(warm)
        kwargs: dict[str, Any] = {"env": env}
        if self.log_path:
            Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # kernel chatter goes here, not the console
            kwargs.update(stdout=self._log, stderr=self._log)
        client.execute(**kwargs)  # starts kernel + client; we own km so nothing is torn down
        self.kc = client.kc
        self.startup_seconds = time.perf_counter() - t0
        return self

    @property
    def alive(self) -> bool:
        if self.km is None or self.kc is None:
            return False
        from jupyter_core.utils import run_sync

        try:
            return bool(run_sync(self.km.is_alive)())
        except Exception:
            return False

    @property
    def pid(self) -> int | None:
        """Process id of the kernel (to prove reuse in tests)."""
        try:
            return self.km.provisioner.process.pid  # type: ignore[union-attr]
        except Exception:
            return None

    def shutdown(self) -> None:
        """Stop the kernel and its channels (safe to call twice)."""
        from jupyter_core.utils import run_sync

        if self.kc is not None:
            try:
                self.kc.stop_channels()
            except Exception:
                pass
        if self.km is not None:
            try:
                run_sync(self.km.shutdown_kernel)(now=True)
            except Exception:
                pass
            try:
                run_sync(self.km.cleanup_resources)()
            except Exception:
                pass
            try:
                self.km.cleanup_ipc_folder()
            except Exception:
                pass
        self.km = None
        self.kc = None
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()
            self._log = None

    def __enter__(self) -> WarmKernel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- execution -------------------------------------------------------------------------
    def _client(self, nb: NotebookNode, workdir: str | os.PathLike | None = None):
        from nbclient import NotebookClient

        client = NotebookClient(
            nb,
            km=self.km,
            kernel_name=self.kernel_name,
            timeout=self.timeout,
            startup_timeout=self.startup_timeout,
            allow_errors=False,
            record_timing=False,
            resources={"metadata": {"path": str(workdir) if workdir else os.getcwd()}},
        )
        client.kc = self.kc
        return client

    def reset(self, workdir: str | os.PathLike) -> None:
        """Wipe the namespace, figures and global settings; chdir into `workdir`."""
        nb = nbformat.v4.new_notebook(
            cells=[nbformat.v4.new_code_cell(_RESET.format(workdir=str(Path(workdir).resolve())))]
        )
        self._client(nb, workdir).execute()

    def execute(self, nb: NotebookNode, workdir: str | os.PathLike) -> NotebookNode:
        """Execute a (parameterised) notebook in `workdir` on the warm kernel.

        Raises ReportExecutionError (carrying the partly executed notebook) when a cell fails,
        the kernel dies or a cell times out. The kernel is restarted lazily on the next call.
        """
        from nbclient.exceptions import CellExecutionError, DeadKernelError

        self.start()
        nb = copy.deepcopy(nb)
        Path(workdir).mkdir(parents=True, exist_ok=True)
        self.reset(workdir)
        client = self._client(nb, workdir)
        try:
            client.execute()
        except CellExecutionError as exc:
            raise ReportExecutionError(_short_error(exc), client.nb) from exc
        except DeadKernelError as exc:
            self.shutdown()
            raise ReportExecutionError(f"kernel died: {exc}", client.nb) from exc
        except Exception as exc:  # timeouts and anything from the kernel machinery
            self.shutdown()  # unknown kernel state: never re-use it
            raise ReportExecutionError(f"{type(exc).__name__}: {exc}", client.nb) from exc
        finally:
            self.reports_run += 1
        _normalise_counts(client.nb)
        return client.nb


def _short_error(exc: Exception) -> str:
    """'ename: evalue' of a CellExecutionError (the full traceback stays in the notebook)."""
    ename = getattr(exc, "ename", None)
    evalue = getattr(exc, "evalue", None)
    if ename:
        return f"{ename}: {evalue}"
    return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__


def _normalise_counts(nb: NotebookNode) -> None:
    """Make execute_result counts equal the cell's count (a warm kernel's counter keeps growing)."""
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "execute_result":
                out["execution_count"] = cell.get("execution_count")


def parameterize(nb: NotebookNode, parameters: Mapping[str, Any]) -> NotebookNode:
    """Inject `parameters` after the cell tagged "parameters" (papermill's convention)."""
    from papermill.parameterize import parameterize_notebook

    nb = copy.deepcopy(nb)
    nb.metadata.setdefault("papermill", {})
    for cell in nb.cells:
        cell.metadata.setdefault("tags", [])
    kernel = nb.metadata.get("kernelspec", {}).get("name") or "python3"
    language = nb.metadata.get("kernelspec", {}).get("language") or "python"
    return parameterize_notebook(nb, dict(parameters), kernel_name=kernel, language=language)
