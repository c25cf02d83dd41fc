# Loa: one image for every part (api, scheduler, workers); the command picks the part.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir -r requirements.lock
COPY . .
RUN pip install --no-cache-dir --no-deps -e . && useradd --create-home loa && chown -R loa /app
USER loa
EXPOSE 8000
CMD ["loa", "api", "--host", "0.0.0.0"]
