# poseserve — set-up is idempotent: the venv is (re)installed only when pyproject.toml changes.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,convert,train,deploy,openvino
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
DEFAULT_MODEL ?= movenet-multipose
# The pretrained models the tests use: `make test` pulls them once into the user's weights store,
# and the tests link them into a temp store instead of pulling.
PRETRAINED_MODELS ?= movenet-multipose nanodet movenet-thunder blazepose-heavy
SHARED ?= $(abspath ../shared)
BENCH_OUT ?= bench-results
PYTEST_ARGS ?=

# Debian packages the end-to-end tests start for real (RTSP cameras: GStreamer rtsp-server, ffmpeg;
# Prometheus and promtool; headless Chromium for the viewer; redis-server).
SYSTEM_PACKAGES := gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base \
	gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav \
	gstreamer1.0-tools ffmpeg prometheus chromium redis-server

.PHONY: setup system-deps models test-models run test lint pytest bench bench-report optimize soak clean prom-check

system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	@# onnxruntime-gpu and plain onnxruntime share one module name: the one installed last wins.
	@if $(BIN)/python -m pip show -q onnxruntime >/dev/null 2>&1; then \
		echo "removing plain onnxruntime (onnxruntime-gpu provides the module)"; \
		$(BIN)/python -m pip uninstall -q -y onnxruntime; \
		$(BIN)/python -m pip install -q --force-reinstall --no-deps onnxruntime-gpu; fi
	@rm -f $(VENV)/.installed-*
	@touch $@

models: setup
	$(BIN)/poseserve models pull $(DEFAULT_MODEL) --parity-images $(SHARED)/data/pose_samples/images

test-models: models
	@set -e; for name in $(filter-out $(DEFAULT_MODEL),$(PRETRAINED_MODELS)); do \
		$(BIN)/poseserve models pull $$name --parity-images $(SHARED)/data/pose_samples/images; \
	done

run: models
	$(BIN)/poseserve serve

lint: setup
	$(BIN)/ruff check service models tests loadtest deploy
	$(BIN)/ruff format --check service models tests loadtest deploy
	$(BIN)/mypy service models

pytest: test-models
	POSESERVE_SHARED_DIR=$(SHARED) $(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

test: lint pytest

# deploy/prometheus under promtool: both configs, the rule files, the rules' unit tests. Debian's promtool
# is built without Kubernetes discovery; tests/integration/test_prometheus_config.py checks that config
# with its discovery block swapped for file_sd.
PROM_DIR := deploy/prometheus
prom-check:
	promtool check config $(PROM_DIR)/prometheus.yml
	@out=$$(promtool check config $(PROM_DIR)/prometheus-kubernetes.yml 2>&1) && echo "$$out" || { \
		grep -q 'field kubernetes_sd_configs not found' <<<"$$out" || { echo "$$out"; exit 1; }; \
		echo "$(PROM_DIR)/prometheus-kubernetes.yml: this promtool lacks Kubernetes discovery (see tests/integration/test_prometheus_config.py)"; }
	promtool check rules $(PROM_DIR)/rules/*.yml
	promtool test rules $(PROM_DIR)/tests/*.yml

# Grafana dashboards as code: regenerate deploy/grafana/dashboards/*.json (never edit the JSON by hand).
.PHONY: dashboards
dashboards: setup
	$(BIN)/python -m deploy.grafana.build

# 640x480 JPEG made from a real photo in ../shared (never copied into the project tree).
$(BENCH_OUT)/bench-640x480.jpg: | setup
	@mkdir -p $(BENCH_OUT)
	$(BIN)/python -c "import cv2,sys; im=cv2.imread(sys.argv[1]); cv2.imwrite(sys.argv[2], cv2.resize(im,(640,480)), [cv2.IMWRITE_JPEG_QUALITY, 90])" \
		$(SHARED)/data/pose_samples/images/crowdpose/$$(ls $(SHARED)/data/pose_samples/images/crowdpose | head -1) $@

# The default model's fastest variant within the AP budget on this machine: every variant this CPU can
# run (OpenVINO bf16 where it has AVX512-BF16/AMX; int8 calibrated on the clips), scored against fp32,
# then `tune` times those installed and fp32 on both runtimes, each in its best batch shape; the
# fastest is served by default from then on.
optimize: models $(BENCH_OUT)/bench-640x480.jpg
	$(BIN)/poseserve models optimize $(DEFAULT_MODEL) --precision auto --samples $(SHARED)/data/pose_samples \
		--calibration $(SHARED)/data/videos
	$(BIN)/poseserve tune $(DEFAULT_MODEL) --image $(BENCH_OUT)/bench-640x480.jpg

bench: models $(BENCH_OUT)/bench-640x480.jpg
	$(BIN)/poseserve bench model $(DEFAULT_MODEL) --image $(BENCH_OUT)/bench-640x480.jpg --batch 1,8 --out $(BENCH_OUT)/model.json
	$(BIN)/poseserve bench http --image $(BENCH_OUT)/bench-640x480.jpg --concurrency 1,8 --out $(BENCH_OUT)/http.json

# Scenario matrix (1-8 cameras at 25 fps; HTTP concurrency 1, 8, 32) -> loadtest/report/REPORT.md + plots.
bench-report: models system-deps
	POSESERVE_SHARED_DIR=$(SHARED) $(BIN)/python -m loadtest.report $(REPORT_ARGS)

# 30 minutes of cameras, WebSocket clients (one never reads) and HTTP at half capacity; not part of `make test`.
soak: models system-deps
	POSESERVE_SHARED_DIR=$(SHARED) $(BIN)/python -m loadtest.soak --minutes $${SOAK_MINUTES:-30} --out $(BENCH_OUT)/soak.json

# The run behind the shipped amfacpose-r18 weights (models/shipped; about 2 h on 2 cores): face points for
# LSPET from the topdown-movenet teacher, then models/shipped/amfacpose-r18.toml. The export lands in the
# weights store, served at once; copying its NAME.onnx + NAME.json into models/shipped ships it.
.PHONY: train-shipped
train-shipped: test-models
	@mkdir -p runs
	test -s runs/lspet-teacher.json || $(BIN)/poseserve data pseudolabel --images $(SHARED)/data/lspet \
		--teacher topdown-movenet --out runs/lspet-teacher.json
	POSESERVE_SHARED_DIR=$(SHARED) $(BIN)/poseserve train amfacpose-r18 --data $(SHARED)/data/lspet/person_keypoints.json \
		--images $(SHARED)/data/lspet --config models/shipped/amfacpose-r18.toml --out runs/amfacpose-r18 $(TRAIN_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_OUT) .mypy_cache .ruff_cache .pytest_cache

# Packaging and deployment checks, no Docker engine or cluster needed: hadolint, the compose spec, every
# k8s overlay built by kustomize (the monitoring generator is an exec plugin: --enable-alpha-plugins),
# kubernetes-validate --strict, checkov, then tests/integration/test_deploy.py (CRD schemas, generated
# monitoring equal to deploy/). `make k8s-render OVERLAY=gpu` prints the manifests to apply.
K8S_OVERLAYS := cpu gpu
OVERLAY ?= gpu
KUSTOMIZE := KUSTOMIZE_PLUGIN_HOME=$(CURDIR)/deploy/kustomize-plugins POSESERVE_PYTHON=$(abspath $(BIN))/python \
	$(BIN)/kubectl kustomize --enable-alpha-plugins
.PHONY: deploy-check k8s-render
k8s-render: setup
	@$(KUSTOMIZE) k8s/overlays/$(OVERLAY)

deploy-check: setup
	$(BIN)/hadolint Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	for o in $(K8S_OVERLAYS); do \
		$(KUSTOMIZE) k8s/overlays/$$o > $$tmp/$$o.yaml; \
		echo "k8s/overlays/$$o: $$(grep -c '^kind:' $$tmp/$$o.yaml) resources"; \
	done; \
	$(BIN)/checkov -f Dockerfile --framework dockerfile --compact --quiet --skip-download; \
	$(BIN)/checkov -d $$tmp --framework kubernetes --compact --quiet --skip-download
	POSESERVE_SHARED_DIR=$(SHARED) $(BIN)/pytest -q tests/integration/test_deploy.py
