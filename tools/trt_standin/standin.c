/* Stand-ins for the TensorRT native libraries (libnvinfer, libnvinfer_plugin, libnvonnxparser).
 *
 * The PyPI wheels tensorrt-cu12-bindings / tensorrt-cu13-bindings hold the real pybind11 module, but
 * the libraries it links against come only from NVIDIA's own index. The module resolves exactly these
 * C entry points when it loads (`nm -D --undefined-only tensorrt.so`, the same set in 10.3, 10.16 and
 * 11.4), so defining them is enough to import it: enums, classes and their attributes, and
 * `tensorrt.__version__` are then the real ones. Every creator returns NULL and every version 0, so
 * nothing can be built or run; the bindings turn a NULL builder or runtime into a Python exception.
 *
 * tools/setup_env.sh compiles this file three times per TensorRT major version, once per library:
 *   gcc -shared -fPIC -DSTANDIN_NVINFER -Wl,-soname,libnvinfer.so.N -o libnvinfer.so.N standin.c
 *   (STANDIN_NVINFER_PLUGIN -> libnvinfer_plugin.so.N, STANDIN_NVONNXPARSER -> libnvonnxparser.so.N)
 * The C++ signatures take pointers and ints; returning NULL/0 from a definition without parameters is
 * ABI-compatible on x86-64 and aarch64 because the callee ignores its argument registers.
 */
#include <stddef.h>

#define STANDIN_EXPORT __attribute__((visibility("default")))

#ifdef STANDIN_NVINFER
STANDIN_EXPORT void *createInferBuilder_INTERNAL(void) { return NULL; }
STANDIN_EXPORT void *createInferRuntime_INTERNAL(void) { return NULL; }
STANDIN_EXPORT void *createInferRefitter_INTERNAL(void) { return NULL; }
STANDIN_EXPORT void *getPluginRegistry(void) { return NULL; }
STANDIN_EXPORT void *getBuilderPluginRegistry(void) { return NULL; }
#endif

#ifdef STANDIN_NVINFER_PLUGIN
STANDIN_EXPORT int initLibNvInferPlugins(void) { return 0; }
#endif

#ifdef STANDIN_NVONNXPARSER
STANDIN_EXPORT void *createNvOnnxParser_INTERNAL(void) { return NULL; }
STANDIN_EXPORT void *createNvOnnxParserRefitter_INTERNAL(void) { return NULL; }
STANDIN_EXPORT int getNvOnnxParserVersion(void) { return 0; }
#endif
