"""``lowbit bundle-runtime DIR``: the runtime, its TVM pieces and the GPU test / benchmark scripts in one folder."""
HELP = "gather what lowbit.runtime needs (tvm_ffi, TVM runtime libraries and files) into DIR for a GPU machine"


def add_arguments(parser):
    parser.add_argument("folder", metavar="DIR", help="folder to create (must be new or empty)")
    parser.add_argument("--python", metavar="X.Y",
                        help="Python version of the machine that runs it (default: this one)")
    parser.add_argument("--cases", action="store_true",
                        help="also compile the GPU numerics cases (every format) into DIR/cases")
    parser.add_argument("--bench", action="store_true",
                        help="also compile the GPU benchmark kernels (W4A16 g128 GEMV ...) into DIR/bench")
    parser.add_argument("--arch", default="sm_90", help="CUDA architecture of the cases and kernels (default sm_90)")


def run(args):
    from lowbit.bundle import bundle_runtime

    summary = bundle_runtime(args.folder, python=args.python, cases=args.cases, bench=args.bench, arch=args.arch)
    print(f"wrote {summary['folder']} ({summary['bytes'] / 2**20:.1f} MiB) for Python {summary['python']}: "
          f"{summary['tvm_ffi']}")
    print(f"on the GPU machine: PYTHONPATH={summary['folder']}/site TVM_USE_RUNTIME_LIB=1 python "
          f"{summary['folder']}/run_gpu_tests.py")
    return 0
