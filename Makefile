# Every target creates .venv and installs the package with its extras when
# missing, so a fresh clone needs only Python 3.11+, a C compiler and make.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SOURCES := $(wildcard ext/datasync/_core/*.pyx ext/datasync/_core/*.pxd) \
	pyproject.toml setup.py

.PHONY: install demo test bench clean proto proto-grpcsync proto-etcd

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) $(SOURCES)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,demo,grpc,rest,etcd,nats]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/datasync demo

test: $(STAMP)
	$(PY) -m pytest

BENCH_JSON := .benchmarks/latest.json

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	mkdir -p .benchmarks
	$(PY) -m pytest benches -p no:randomly --benchmark-only \
		--benchmark-columns=min,median,rounds \
		--benchmark-json=$(BENCH_JSON)
	$(PY) benches/report.py $(BENCH_JSON) --plots docs/img

# Regenerates the example schema's Python module with the grpcio-tools
# version recorded in src/datasync/examples/README.md.
proto: $(STAMP)
	$(PY) -c 'import grpc_tools' 2>/dev/null || \
		$(PY) -m pip install --quiet 'grpcio-tools==1.85.1'
	$(PY) -m grpc_tools.protoc -I src --python_out=src \
		src/datasync/examples/netagent.proto

# Regenerates the DataMsgService modules with the grpcio-tools version
# recorded in src/datasync/grpcsync/msg.proto, then puts that record at
# the top of each generated file.
GRPCSYNC_TOOLS := grpcio-tools==1.85.1
GRPCSYNC_GENERATED := src/datasync/grpcsync/msg_pb2.py \
	src/datasync/grpcsync/msg_pb2_grpc.py
proto-grpcsync: $(STAMP)
	$(PY) -m pip install --quiet '$(GRPCSYNC_TOOLS)'
	$(PY) -m grpc_tools.protoc -I src --python_out=src \
		--grpc_python_out=src src/datasync/grpcsync/msg.proto
	for f in $(GRPCSYNC_GENERATED); do \
		sed -i '1i # Made by `make proto-grpcsync` with $(GRPCSYNC_TOOLS) (protoc 35.1) from msg.proto.' $$f; \
	done

# Regenerates the etcd backend's gRPC modules from the subset of etcd's
# API in src/datasync/keyval/etcd with the grpcio-tools version below,
# then puts the generator and command at the top of each generated file.
# Only the messages get a _pb2 module and only the services a _pb2_grpc
# module: the services' _pb2 is not needed at run time.
ETCD_TOOLS := grpcio-tools==1.85.1
ETCD_PROTO := src/datasync/keyval/etcd
ETCD_PROTOC := $(PY) -m grpc_tools.protoc -I src
proto-etcd: $(STAMP)
	$(PY) -m pip install --quiet '$(ETCD_TOOLS)'
	$(ETCD_PROTOC) --python_out=src $(ETCD_PROTO)/etcd_messages.proto
	$(ETCD_PROTOC) --grpc_python_out=src $(ETCD_PROTO)/etcd_services.proto
	version="$$($(ETCD_PROTOC) --version)"; \
	sed -i -e "1i # Made by 'make proto-etcd' with $(ETCD_TOOLS) ($$version):" \
		-e '1i # python -m grpc_tools.protoc -I src --python_out=src $(ETCD_PROTO)/etcd_messages.proto' \
		$(ETCD_PROTO)/etcd_messages_pb2.py; \
	sed -i -e "1i # Made by 'make proto-etcd' with $(ETCD_TOOLS) ($$version):" \
		-e '1i # python -m grpc_tools.protoc -I src --grpc_python_out=src $(ETCD_PROTO)/etcd_services.proto' \
		$(ETCD_PROTO)/etcd_services_pb2_grpc.py

clean:
	rm -rf build $(VENV) src/*.egg-info
	find ext -name '*.c' -delete
	find src -name '*.so' -delete
