# syntax=docker/dockerfile:1
# CPU image by default. For a CUDA image: --build-arg TORCH_INDEX_URL= (empty: PyPI's CUDA torch)
# --build-arg FAISS=gpu (faiss-gpu and its CUDA libraries instead of faiss-cpu).
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG FAISS=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip \
 && if [ -n "$TORCH_INDEX_URL" ]; then pip install "torch==${TORCH_VERSION}" --index-url "$TORCH_INDEX_URL"; \
    else pip install "torch==${TORCH_VERSION}"; fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY retriever ./retriever
COPY protos ./protos
RUN pip install ".[${FAISS}]"
# Build the bundled sample index into the image so the first start needs no encoding.
ENV RETRIEVER_CACHE_DIR=/var/cache/retriever
RUN retriever -q demo --no-progress > /dev/null

FROM python:${PYTHON_VERSION}-slim
COPY --from=build /opt/venv /opt/venv
COPY --from=build /var/cache/retriever /var/cache/retriever
ENV PATH=/opt/venv/bin:$PATH \
    RETRIEVER_CACHE_DIR=/var/cache/retriever \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
RUN useradd --system --no-create-home retriever && chmod -R a+rX /var/cache/retriever
USER retriever
EXPOSE 50051
ENTRYPOINT ["retriever"]
# Listening beyond loopback needs a bearer token: docker run -e RETRIEVER_AUTH_TOKEN=... -p 50051:50051
# (or add --insecure behind an authenticating proxy). Serves the prebuilt sample index by default;
# mount built indexes and pass --index NAME=/indexes/NAME to serve your own.
CMD ["serve", "--host", "0.0.0.0"]
