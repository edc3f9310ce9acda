"""The worker process. Its edge: __main__.py / app.py start it (config.py), server.py serves
yaie.worker.v1, wire.py converts every message, auth.py guards the channel. Inside: step/ runs
each plan on the device (plan -> request table -> ForwardBatch -> model -> sampling), models/
holds the decoders and loader.py their weights, tp/ splits one worker over several GPUs."""
