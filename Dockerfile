FROM python:3.11-slim
WORKDIR /app
# The CPU build of torch; use a CUDA base image and wheel for GPU workers.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY registry registry
COPY cli cli
COPY trainer trainer
COPY migrations migrations
RUN pip install --no-cache-dir '.[train]'
EXPOSE 8765
CMD ["adapterreg", "serve", "--host", "0.0.0.0"]
