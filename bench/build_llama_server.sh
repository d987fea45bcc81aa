#!/usr/bin/env bash
# llama.cpp's own server (`llama-server`, parallel slots) for bench/serve_vs_llama_cpp.py, built on a 2-core machine
# in ~8 minutes by compiling only tools/server/ and linking it against the shared libraries (ggml, llama,
# llama-common, mtmd) of a llama-cpp-python wheel built from the same sdist. Why: llama-cpp-python's own server
# has no parallel slots (abetlen/llama-cpp-python#1329), and its build does not make llama-server; building
# all of llama.cpp again would compile ~250 more files.
#   pip wheel --no-deps llama-cpp-python==0.3.36 -w WHEELDIR     # ~20 min here; its sdist vendors llama.cpp 0c1e570
#   pip install --target SITE WHEELDIR/llama_cpp_python-*.whl    # SITE/lib: the shared libraries and their cmake files
#   bash bench/build_llama_server.sh SDIST_DIR SITE/lib OUT_DIR  # SDIST_DIR: the unpacked llama_cpp_python-0.3.36
# The web UI is left out (no assets are downloaded; the server's API is all the benchmark uses).
set -euo pipefail
sdist=${1:?unpacked llama_cpp_python sdist}
lib=${2:?lib folder of the installed wheel}
out=${3:?output folder}
src="$sdist/vendor/llama.cpp"
mkdir -p "$out/ui" "$out/obj"
cmake -DUI_SOURCE_DIR="$src/tools/ui" -DUI_BINARY_DIR="$out/ui" -DLLAMA_SOURCE_DIR="$src" -DLLAMA_BUILD_NUMBER=1 \
    -DHF_BUCKET=ggml-org/llama-ui -DHF_VERSION= -DHF_ENABLED=OFF -DBUILD_UI=OFF -DLLAMA_UI_GZIP=ON \
    -P "$src/scripts/ui-assets.cmake"
# The definitions llama-common was built with (LLAMA_SUBPROCESS, cpp-httplib with OpenSSL) keep its headers' layout.
flags="-O2 -DNDEBUG -std=gnu++17 -fPIC -pthread -DLLAMA_SHARED -DGGML_SHARED -DGGML_BACKEND_SHARED -DLLAMA_SUBPROCESS
 -DCPPHTTPLIB_OPENSSL_SUPPORT -I$src/tools/server -I$out/ui -I$src/tools/mtmd -I$src -I$src/common -I$src/include
 -I$src/ggml/include -I$src/vendor -I$src/vendor/cpp-httplib"
ls "$src"/tools/server/server*.cpp "$src/tools/server/main.cpp" "$out/ui/ui.cpp" |
    xargs -P 2 -I{} sh -c "nice -n 10 g++ $(echo $flags) -c {} -o $out/obj/\$(basename {} .cpp).o"
nice -n 10 g++ -pthread "$out"/obj/*.o -o "$out/llama-server" -L"$lib" -Wl,-rpath,"$lib" \
    -lllama-common -lmtmd -lllama -lggml -lggml-base -lggml-cpu -lssl -lcrypto
"$out/llama-server" --version
