# One image for every o1lora service (api, worker-train, worker-generate); docker-compose.yml picks the command.
#   docker compose up --build
# The PyPI torch wheel for Linux bundles the CUDA runtime, so a slim Python base is enough: the GPU driver comes
# from the host through the NVIDIA container toolkit (deploy.resources.reservations.devices in compose).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# torch first, in its own layer: it is by far the largest dependency and changes least often.
RUN pip install torch==2.13.0

# Dependencies next (from pyproject only), so that a code change does not reinstall them.
COPY pyproject.toml README.md ./
# The flower extra: the optional dashboard service of docker-compose.yml (a few small packages).
RUN mkdir -p api core db worker && pip install '.[flower]' && pip uninstall -y o1lora

COPY . .
# /cache: where compose mounts the workers' store cache volume (a new volume takes this folder's owner).
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 1000 o1lora \
    && mkdir -p /data /cache && chown o1lora /data /cache
USER o1lora

ENV O1LORA_DATA_DIR=/data
EXPOSE 8000
CMD ["uvicorn", "--factory", "api.main:create_app", "--host", "0.0.0.0", "--port", "8000"]
