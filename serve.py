"""Serve a checkpoint over HTTP: a page to play with at /, torch-rnn-server's JSON /generate, and
/stream, the text as it is generated (server-sent events).

    python serve.py cv/lm_epoch30.pt             # then open http://127.0.0.1:8080/
"""
from util.charmodel import CharModel
from util.device import CUDA_GRAPHS_OPTION, GPU_OPTIONS, configure_cpu, graphs_requested, select_device
from util.errors import UserError, diagnostic, run_main
from util.options import Option, parse_options
from util.server import Limits, open_server, serve_until_stopped, url

OPTIONS = [
    Option("host", "127.0.0.1", "address to listen on; any other than loopback lets others use the model"),
    Option("port", 8080, "port to listen on; 0 = a free one (the URL printed says which)"),
    Option("max_length", 2000, "most characters one request may ask for (its length)"),
    Option("max_samples", 10, "most completions one /generate request may ask for (its n)"),
    Option("threads", 1, "CPU threads of each generation's kernels; 0 (or negative) = all cores"),
    *GPU_OPTIONS,
    CUDA_GRAPHS_OPTION,
    Option("quiet", 0, "no line per request on stderr (a flag: -quiet alone means 1)", value_type=bool),
]


def main(argv: list[str]) -> None:
    opt = parse_options(argv, "serve.py", "Serve a trained character model over HTTP (a page, JSON, a stream).",
                        OPTIONS, positional=[("checkpoint", "model checkpoint to serve (.pt or Torch7 .t7)")]).values
    for name in ("max_length", "max_samples"):
        if getattr(opt, name) < 1:
            raise UserError(f"-{name} must be 1 or more, not {getattr(opt, name)}")
    graphs = graphs_requested(opt.cuda_graphs)
    device = select_device(opt.gpuid, opt.opencl, log=diagnostic)
    # One character at a time, every product is tiny, and each request has its own thread: one
    # kernel thread per generation serves concurrent clients best (bench/serve_load.py).
    configure_cpu(opt.threads)
    try:
        model = CharModel.load(opt.checkpoint, str(device))
        model.cuda_graphs = graphs
    except KeyboardInterrupt:  # Ctrl-C while loading: stopped, as later
        print("stopped", flush=True)
        return
    server = open_server(opt.host, opt.port, model, Limits(opt.max_length, opt.max_samples), bool(opt.quiet))
    print(f"serving {opt.checkpoint} ({model.describe()}) at {url(server)} (Ctrl-C stops)", flush=True)
    serve_until_stopped(server)
    print("stopped", flush=True)


if __name__ == "__main__":
    run_main(main)
