"""`icv-serve`: InstructCV behind an HTTP API on Ray Serve (FastAPI ingress, dynamic batching, replicas).

    settings.py   every option of the service, checked once (CLI, Serve config file and the deployments share it)
    form.py       one multipart request -> a checked Job, or an ApiError with its HTTP status
    app.py        the Ray Serve application: the Gateway (HTTP) and the InstructCVModel deployment (batches)
    cli.py        `icv-serve` (run locally or on a Ray cluster) and `icv-serve config` (a file for `serve deploy`)
    loadtest.py   a local server process and a bounded load generator (tests, benchmarks/serve_load.py)
    static/       the web page at `/`

Nothing here is imported by the runtime; Ray, FastAPI and prometheus_client come with `pip install -e ".[serve]"`.
"""
