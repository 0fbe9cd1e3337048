"""``lowbit run``: run an artifact on inputs stored as .npy files, with the runtime only (no compiler)."""
import os

HELP = "run an artifact on .npy inputs"


def add_arguments(parser):
    parser.add_argument("artifact", help="a .lowbit file written by lowbit.compile(...).save(path)")
    parser.add_argument("input_files", nargs="*", metavar="X.npy",
                        help="input arrays in the model's input order (one .npy per input)")
    parser.add_argument("--input", "-i", action="append", default=[], metavar="NAME=X.npy",
                        help="an input by name (repeat for several inputs)")
    parser.add_argument("--output", "-o", metavar="OUT.npy|OUT.npz",
                        help="write the output(s): .npy for one output, .npz (keyed by output name) for any")


def run(args):
    import lowbit.runtime

    _check_output_path(args.output)
    model = lowbit.runtime.load(args.artifact)
    _check_output_count(args.output, [spec["name"] for spec in model.outputs])
    positional = [_load_array(path, f"input {index}") for index, path in enumerate(args.input_files)]
    named = dict(_named_input(item) for item in args.input)
    result = model(*positional, **named)
    results = result if isinstance(result, tuple) else (result,)
    names = [spec["name"] for spec in model.outputs]
    for name, array in zip(names, results):
        print(_summary(name, array))
    if args.output:
        _write(args.output, names, results)
        print(f"wrote {args.output}")
    return 0


def _check_output_path(path):
    from lowbit.errors import InputError

    if path is not None and not path.endswith((".npy", ".npz")):
        raise InputError(f"--output {path!r} must end in .npy (one output) or .npz (outputs by name)")


def _check_output_count(path, names):
    from lowbit.errors import InputError

    if path is not None and path.endswith(".npy") and len(names) != 1:
        raise InputError(f"--output {path!r}: the model has {len(names)} outputs ({', '.join(names)}); "
                         "write them to a .npz file")


def _named_input(item):
    from lowbit.errors import InputError

    name, sep, path = item.partition("=")
    if not sep or not name or not path:
        raise InputError(f"--input {item!r} is not NAME=FILE.npy: write e.g. --input x=x.npy")
    return name, _load_array(path, f"input {name!r}")


def _load_array(path, what):
    import numpy as np

    from lowbit.errors import InputError

    if not os.path.isfile(path):
        raise InputError(f"{what}: file {path!r} does not exist; pass a .npy file saved with np.save")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{what}: {path!r} is not a readable .npy file ({err}); save it with np.save") from err


def _summary(name, array):
    import numpy as np

    stats = ""
    if array.size and np.issubdtype(array.dtype, np.number):
        stats = f"  min {array.min():.4g}  max {array.max():.4g}  mean {array.mean():.4g}"
    return f"{name}: {array.dtype} {tuple(array.shape)}{stats}"


def _write(path, names, results):
    import numpy as np

    from lowbit.runtime.atomic import atomic_file

    with atomic_file(path) as f:  # a file object: np.save / np.savez add no suffix to it
        if path.endswith(".npz"):
            np.savez(f, **dict(zip(names, results)))
        else:
            np.save(f, results[0])
