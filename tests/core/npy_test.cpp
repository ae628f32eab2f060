// NPY/NPZ: round trips for every supported dtype and shape, files real NumPy wrote (when
// /usr/bin/python3 has numpy), and every kind of bad file with its status code.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "mixq/io.h"
#include "support/onnx_builder.h"
#include "support/status_matchers.h"
#include "support/test_util.h"

namespace mixq {
namespace {

using testing::random_int_tensor;
using testing::random_tensor;
using testing::read_file;
using testing::status_is;
using testing::write_file;

// A tensor of `dtype` and `shape` with seeded, not-all-zero contents.
Tensor random_of(DType dtype, const Shape& shape, uint64_t seed) {
  switch (dtype) {
    case DType::kFloat32:
      return random_tensor(shape, seed, -100.0f, 100.0f);
    case DType::kFloat16:
      return random_tensor(shape, seed, -100.0f, 100.0f).to(DType::kFloat16);
    case DType::kInt8:
      return random_int_tensor(dtype, shape, seed, -128, 127);
    case DType::kUInt8:
      return random_int_tensor(dtype, shape, seed, 0, 255);
    case DType::kInt32:
      return random_int_tensor(dtype, shape, seed, -2000000000, 2000000000);
    case DType::kInt64:
      return random_int_tensor(dtype, shape, seed, -(int64_t(1) << 60), int64_t(1) << 60);
    case DType::kBool:
      return random_int_tensor(dtype, shape, seed, 0, 1);
    default:
      break;
  }
  ADD_FAILURE() << "no generator for " << dtype_name(dtype);
  return Tensor();
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() &&
         (a.nbytes() == 0 || std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0);
}

// An NPY file written by hand, for headers NumPy would not write or mixq does not.
std::string npy_bytes(const std::string& descr, const std::string& fortran,
                      const std::string& shape, const std::string& data, int major = 1) {
  std::string header =
      "{'descr': '" + descr + "', 'fortran_order': " + fortran + ", 'shape': " + shape + ", }";
  const size_t prefix = major == 1 ? 10 : 12;
  header.append((64 - (prefix + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::string out = "\x93NUMPY";
  out += char(major);
  out += char(0);
  out += char(header.size() & 0xff);
  out += char((header.size() >> 8) & 0xff);
  if (major != 1) out += std::string(2, '\0');
  return out + header + data;
}

template <typename T>
std::string raw_bytes(const std::vector<T>& v, bool big_endian = false) {
  std::string s(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
  if (big_endian)
    for (size_t i = 0; i < v.size(); ++i)
      std::reverse(s.begin() + i * sizeof(T), s.begin() + (i + 1) * sizeof(T));
  return s;
}

constexpr DType kNpyDTypes[] = {DType::kFloat32, DType::kFloat16, DType::kInt8, DType::kUInt8,
                                DType::kInt32,   DType::kInt64,   DType::kBool};

const std::vector<Shape> kShapes = {{}, {0}, {7}, {2, 3, 4}, {3, 0, 2}, {1, 1, 1, 5}};

// --- round trips
// ------------------------------------------------------------------------------------

TEST(Npy, RoundTripsEveryDTypeAndShape) {
  testing::TempDir dir;
  uint64_t seed = 1;
  for (DType dtype : kNpyDTypes) {
    for (const Shape& shape : kShapes) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + shape_to_string(shape));
      const Tensor t = random_of(dtype, shape, seed++);
      if (t.numel() > 1) {
        bool any_nonzero = false;
        for (int64_t i = 0; i < t.numel(); ++i) any_nonzero |= t.get_as_double(i) != 0;
        ASSERT_TRUE(any_nonzero);
      }
      const std::string path = dir.file("t.npy");
      ASSERT_TRUE(save_npy(path, t).ok());
      auto back = load_npy(path);
      ASSERT_TRUE(back.ok()) << back.status().to_string();
      EXPECT_EQ(back->dtype(), dtype);
      EXPECT_EQ(back->shape(), shape);
      EXPECT_TRUE(same_bytes(*back, t));
      // And in memory, with the header NumPy requires: 64-byte aligned, a proper tuple.
      const std::string bytes = serialize_npy(t);
      EXPECT_EQ(bytes.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
      const size_t header_len = uint8_t(bytes[8]) | (size_t(uint8_t(bytes[9])) << 8);
      EXPECT_EQ((10 + header_len) % 64, 0u);
      EXPECT_EQ(bytes.size(), 10 + header_len + t.nbytes());
      EXPECT_EQ(bytes[10 + header_len - 1], '\n');
      auto parsed = parse_npy(bytes, "memory");
      ASSERT_TRUE(parsed.ok()) << parsed.status().to_string();
      EXPECT_TRUE(same_bytes(*parsed, t));
    }
  }
}

TEST(Npy, ShapeTuplesAreWrittenAsPythonTuples) {
  // NumPy evaluates the header as a Python literal: (7) would be an int, not a shape.
  EXPECT_NE(serialize_npy(random_tensor({7}, 1)).find("'shape': (7,)"), std::string::npos);
  EXPECT_NE(serialize_npy(Tensor::scalar<float>(1.5f)).find("'shape': ()"), std::string::npos);
  const std::string s = serialize_npy(random_tensor({2, 3}, 2));
  EXPECT_TRUE(s.find("'shape': (2,3)") != std::string::npos ||
              s.find("'shape': (2, 3)") != std::string::npos)
      << s.substr(0, 80);
  EXPECT_NE(s.find("'descr': '<f4'"), std::string::npos);
  EXPECT_NE(s.find("'fortran_order': False"), std::string::npos);
}

TEST(Npy, ScalarKeepsItsValue) {
  testing::TempDir dir;
  ASSERT_TRUE(save_npy(dir.file("s.npy"), Tensor::scalar<int64_t>(-1234567890123LL)).ok());
  auto back = load_npy(dir.file("s.npy"));
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back->rank(), 0);
  EXPECT_EQ(back->get_as_int64(0), -1234567890123LL);
}

// --- byte orders and header forms
// -----------------------------------------------------------------------

TEST(Npy, BigEndianIsReadCorrectly) {
  const std::vector<float> f = {1.5f, -2.25f, 3.0e-5f, 65504.0f, -0.125f, 7.0f};
  auto t = parse_npy(npy_bytes(">f4", "False", "(2, 3)", raw_bytes(f, true)), "be.npy");
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(t->dtype(), DType::kFloat32);
  EXPECT_EQ(t->shape(), (Shape{2, 3}));
  EXPECT_EQ(t->to_float_vector(), f);

  const std::vector<int64_t> i = {1, -2, int64_t(1) << 40, -(int64_t(1) << 50) + 3};
  auto ti = parse_npy(npy_bytes(">i8", "False", "(4,)", raw_bytes(i, true)), "be.npy");
  ASSERT_TRUE(ti.ok()) << ti.status().to_string();
  EXPECT_EQ(ti->to_int64_vector(), i);

  const std::vector<int32_t> j = {70000, -70000, 1};
  auto tj = parse_npy(npy_bytes(">i4", "False", "(3,)", raw_bytes(j, true)), "be.npy");
  ASSERT_TRUE(tj.ok()) << tj.status().to_string();
  EXPECT_EQ(tj->to_int64_vector(), (std::vector<int64_t>{70000, -70000, 1}));

  const std::vector<uint16_t> h = {float_to_half(1.5f).bits, float_to_half(-3.0f).bits};
  auto th = parse_npy(npy_bytes(">f2", "False", "(2,)", raw_bytes(h, true)), "be.npy");
  ASSERT_TRUE(th.ok()) << th.status().to_string();
  EXPECT_EQ(th->to(DType::kFloat32).to_float_vector(), (std::vector<float>{1.5f, -3.0f}));

  // Little-endian and "not applicable" (|) byte orders read as they are.
  auto tl = parse_npy(npy_bytes("<f4", "False", "(2, 3)", raw_bytes(f)), "le.npy");
  ASSERT_TRUE(tl.ok());
  EXPECT_EQ(tl->to_float_vector(), f);
  const std::vector<int8_t> b = {-5, 100, 3};
  auto tb = parse_npy(npy_bytes("|i1", "False", "(3,)", raw_bytes(b)), "i1.npy");
  ASSERT_TRUE(tb.ok());
  EXPECT_EQ(tb->to_int64_vector(), (std::vector<int64_t>{-5, 100, 3}));
}

TEST(Npy, Version2HeaderIsRead) {
  const std::vector<float> f = {0.5f, -1.5f, 2.5f};
  auto t = parse_npy(npy_bytes("<f4", "False", "(3,)", raw_bytes(f), 2), "v2.npy");
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(t->to_float_vector(), f);
}

// --- bad files
// ----------------------------------------------------------------------------------------------

TEST(Npy, MissingFileIsNotFound) {
  testing::TempDir dir;
  const std::string path = dir.file("absent.npy");
  EXPECT_TRUE(status_is(load_npy(path), StatusCode::kNotFound, {path}));
}

TEST(Npy, Float64IsRefusedWithAHint) {
  const std::vector<double> d = {1.0, 2.0};
  EXPECT_TRUE(status_is(parse_npy(npy_bytes("<f8", "False", "(2,)", raw_bytes(d)), "doubles.npy"),
                        StatusCode::kUnsupported, {"doubles.npy", "<f8", "astype(numpy.float32)"}));
}

TEST(Npy, OtherUnsupportedDTypesNameWhatIsRead) {
  EXPECT_TRUE(status_is(parse_npy(npy_bytes("<c8", "False", "(1,)", std::string(8, '\1')), "c.npy"),
                        StatusCode::kUnsupported, {"c.npy", "<c8", "float32"}));
  EXPECT_TRUE(status_is(parse_npy(npy_bytes("<u2", "False", "(1,)", std::string(2, '\1')), "u.npy"),
                        StatusCode::kUnsupported, {"u.npy", "<u2"}));
}

TEST(Npy, TruncatedDataIsDataLoss) {
  const Tensor t = random_tensor({4, 5}, 3);
  const std::string full = serialize_npy(t);
  for (size_t cut : {size_t(1), size_t(3), size_t(40), t.nbytes()}) {
    SCOPED_TRACE("cut " + std::to_string(cut));
    EXPECT_TRUE(status_is(parse_npy(full.substr(0, full.size() - cut), "short.npy"),
                          StatusCode::kDataLoss, {"short.npy", "truncated", "80 bytes"}));
  }
  testing::TempDir dir;
  write_file(dir.file("short.npy"), full.substr(0, full.size() - 8));
  EXPECT_TRUE(status_is(load_npy(dir.file("short.npy")), StatusCode::kDataLoss,
                        {dir.file("short.npy"), "truncated"}));
}

TEST(Npy, TruncatedHeaderIsAParseError) {
  const std::string full = serialize_npy(random_tensor({4, 5}, 3));
  EXPECT_TRUE(status_is(parse_npy(full.substr(0, 30), "head.npy"), StatusCode::kParseError,
                        {"head.npy", "truncated"}));
  EXPECT_TRUE(
      status_is(parse_npy(full.substr(0, 7), "tiny.npy"), StatusCode::kParseError, {"tiny.npy"}));
  EXPECT_TRUE(status_is(parse_npy("", "empty.npy"), StatusCode::kParseError, {"empty.npy"}));
}

TEST(Npy, BadMagicIsAParseError) {
  std::string bytes = serialize_npy(random_tensor({3}, 4));
  bytes[1] = 'M';  // "\x93MUMPY"
  EXPECT_TRUE(status_is(parse_npy(bytes, "magic.npy"), StatusCode::kParseError,
                        {"magic.npy", "not an NPY file", "NUMPY"}));
  testing::TempDir dir;
  write_file(dir.file("text.npy"), "just some text, definitely not numpy data\n");
  EXPECT_TRUE(status_is(load_npy(dir.file("text.npy")), StatusCode::kParseError,
                        {dir.file("text.npy"), "not an NPY file"}));
}

TEST(Npy, UnknownFormatVersionIsUnsupported) {
  std::string bytes = serialize_npy(random_tensor({3}, 4));
  bytes[6] = char(9);
  EXPECT_TRUE(
      status_is(parse_npy(bytes, "v9.npy"), StatusCode::kUnsupported, {"v9.npy", "version 9"}));
}

TEST(Npy, FortranOrderIsUnsupported) {
  const std::vector<float> f = {1, 2, 3, 4, 5, 6};
  EXPECT_TRUE(status_is(parse_npy(npy_bytes("<f4", "True", "(2, 3)", raw_bytes(f)), "f.npy"),
                        StatusCode::kUnsupported, {"f.npy", "Fortran", "ascontiguousarray"}));
}

TEST(Npy, UnreadableHeaderIsAParseError) {
  std::string bytes = npy_bytes("<f4", "False", "(2, 3)", std::string(24, '\1'));
  const size_t pos = bytes.find("'shape'");
  ASSERT_NE(pos, std::string::npos);
  bytes.replace(pos, 7, "'shope'");
  EXPECT_TRUE(status_is(parse_npy(bytes, "h.npy"), StatusCode::kParseError, {"h.npy", "header"}));
  EXPECT_TRUE(
      status_is(parse_npy(npy_bytes("<f4", "False", "(2, x)", std::string(24, '\1')), "s.npy"),
                StatusCode::kParseError, {"s.npy", "shape"}));
}

TEST(Npy, BoolOtherThanZeroOrOneIsRefused) {
  EXPECT_TRUE(
      status_is(parse_npy(npy_bytes("|b1", "False", "(3,)", std::string("\1\2\0", 3)), "b.npy"),
                StatusCode::kParseError, {"b.npy", "bool"}));
}

// --- npz
// --------------------------------------------------------------------------------------------------------

TEST(Npz, RoundTripKeepsNamesOrderAndValues) {
  testing::TempDir dir;
  const NamedTensors tensors = {{"weights", random_tensor({3, 4}, 1)},
                                {"ids", random_of(DType::kInt64, {5}, 2)},
                                {"flags", random_of(DType::kBool, {4}, 3)},
                                {"scalar", Tensor::scalar<float>(-7.5f)},
                                {"a.b/c", random_of(DType::kInt8, {2, 2}, 4)},
                                {"half", random_of(DType::kFloat16, {6}, 5)},
                                {"nothing", Tensor::empty(DType::kFloat32, {0, 3})}};
  const std::string path = dir.file("bundle.npz");
  ASSERT_TRUE(save_npz(path, tensors).ok());
  auto back = load_npz(path);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  ASSERT_EQ(back->size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    SCOPED_TRACE(tensors[i].first);
    EXPECT_EQ((*back)[i].first, tensors[i].first);
    EXPECT_EQ((*back)[i].second.dtype(), tensors[i].second.dtype());
    EXPECT_EQ((*back)[i].second.shape(), tensors[i].second.shape());
    EXPECT_TRUE(same_bytes((*back)[i].second, tensors[i].second));
  }
}

TEST(Npz, EmptyArchive) {
  // libzip alone writes no file for an archive without entries; save_npz must still write one
  // (as numpy.savez does) so that what it reported as saved loads back.
  testing::TempDir dir;
  ASSERT_TRUE(save_npz(dir.file("empty.npz"), {}).ok());
  ASSERT_TRUE(std::filesystem::exists(dir.file("empty.npz")));
  auto back = load_npz(dir.file("empty.npz"));
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_TRUE(back->empty());
  // Saving nothing over an existing archive replaces it.
  ASSERT_TRUE(save_npz(dir.file("was_full.npz"), {{"a", random_tensor({2}, 1)}}).ok());
  ASSERT_TRUE(save_npz(dir.file("was_full.npz"), {}).ok());
  auto replaced = load_npz(dir.file("was_full.npz"));
  ASSERT_TRUE(replaced.ok()) << replaced.status().to_string();
  EXPECT_TRUE(replaced->empty());
}

TEST(Npz, MissingFileIsNotFound) {
  testing::TempDir dir;
  EXPECT_TRUE(
      status_is(load_npz(dir.file("absent.npz")), StatusCode::kNotFound, {dir.file("absent.npz")}));
}

TEST(Npz, CorruptArchivesAreReported) {
  testing::TempDir dir;
  const std::string good = dir.file("good.npz");
  ASSERT_TRUE(
      save_npz(good, {{"first", random_tensor({64, 64}, 1)}, {"second", random_tensor({16}, 2)}})
          .ok());
  const std::string bytes = read_file(good);
  ASSERT_GT(bytes.size(), 1000u);

  // Not a zip at all.
  std::mt19937_64 rng(5);
  std::string noise(2048, '\0');
  for (char& c : noise) c = char(rng() & 0xff);
  write_file(dir.file("noise.npz"), noise);
  EXPECT_TRUE(status_is(load_npz(dir.file("noise.npz")), StatusCode::kParseError,
                        {dir.file("noise.npz"), "NPZ"}));

  // Cut in half: the central directory is gone.
  write_file(dir.file("half.npz"), bytes.substr(0, bytes.size() / 2));
  EXPECT_TRUE(
      status_is(load_npz(dir.file("half.npz")), StatusCode::kParseError, {dir.file("half.npz")}));

  // Damage inside the first entry's data: the directory is intact, the data is not.
  std::string damaged = bytes;
  const size_t name_len = uint8_t(bytes[26]) | (size_t(uint8_t(bytes[27])) << 8);
  const size_t extra_len = uint8_t(bytes[28]) | (size_t(uint8_t(bytes[29])) << 8);
  const size_t data_start = 30 + name_len + extra_len;
  for (size_t i = 0; i < 64; ++i) damaged[data_start + 200 + i] ^= char(0x5a);
  write_file(dir.file("damaged.npz"), damaged);
  auto r = load_npz(dir.file("damaged.npz"));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(r.status().code() == StatusCode::kDataLoss ||
              r.status().code() == StatusCode::kParseError)
      << r.status().to_string();
  EXPECT_NE(r.status().message().find("damaged.npz"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("first"), std::string::npos) << r.status().message();
}

// --- files real NumPy wrote, and NumPy reading ours
// -----------------------------------------------------

class NumpyFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists("/usr/bin/python3"))
      GTEST_SKIP() << "/usr/bin/python3 is not installed";
    if (std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") != 0)
      GTEST_SKIP() << "numpy is not installed for /usr/bin/python3";
  }

  // Runs a Python program (numpy imported as np, `d` = the temp dir); fails the test on error.
  void python(const std::string& program) {
    const std::string script = dir_.file("script.py");
    std::ofstream(script) << "import sys, numpy as np\nd = sys.argv[1]\n" << program << "\n";
    const std::string cmd = "/usr/bin/python3 " + script + " " + dir_.path().string() + " > " +
                            dir_.file("py.log") + " 2>&1";
    const int rc = std::system(cmd.c_str());
    ASSERT_EQ(rc, 0) << "python failed:\n" << read_file(dir_.file("py.log"));
  }

  std::string file(const std::string& name) const { return dir_.file(name); }

  testing::TempDir dir_;
};

TEST_F(NumpyFiles, ReadsWhatNumpyWrites) {
  ASSERT_NO_FATAL_FAILURE(python(R"(
a = np.arange(24, dtype=np.float32).reshape(2, 3, 4) * 0.5 - 3
np.save(d + '/f32.npy', a)
np.save(d + '/f16.npy', a.astype(np.float16))
np.save(d + '/i8.npy', np.arange(-12, 12, dtype=np.int8).reshape(4, 6))
np.save(d + '/u8.npy', np.arange(200, 224, dtype=np.uint8))
np.save(d + '/i32.npy', (np.arange(24, dtype=np.int32) * -100000 + 7).reshape(6, 4))
np.save(d + '/i64.npy', np.arange(5, dtype=np.int64) * 10**12 + 1)
np.save(d + '/bool.npy', np.arange(7) % 3 == 0)
np.save(d + '/scalar.npy', np.array(2.5, dtype=np.float32))
np.save(d + '/empty.npy', np.ones((0, 3), np.float32))
np.save(d + '/be_f4.npy', (np.arange(6, dtype='>f4') * 1.25 - 2).reshape(2, 3))
np.save(d + '/be_i8.npy', np.arange(4, dtype='>i8') * -3 + 1)
np.save(d + '/f64.npy', np.arange(3, dtype=np.float64))
np.save(d + '/fortran.npy', np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)))
with open(d + '/v2.npy', 'wb') as f:
    np.lib.format.write_array(f, np.arange(3, dtype=np.float32) + 0.25, version=(2, 0))
np.savez(d + '/plain.npz', first=a, second=np.arange(5, dtype=np.int64) - 2)
np.savez_compressed(d + '/packed.npz', big=np.arange(1000, dtype=np.float32) * 0.001 + 1)
import zipfile
with zipfile.ZipFile(d + '/text.npz', 'w') as z:
    z.writestr('notes.txt', 'hello')
)"));

  auto expect_floats = [&](const std::string& name, DType dtype, const Shape& shape,
                           const std::vector<float>& values) {
    SCOPED_TRACE(name);
    auto t = load_npy(file(name));
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    EXPECT_EQ(t->dtype(), dtype);
    EXPECT_EQ(t->shape(), shape);
    EXPECT_EQ(t->to(DType::kFloat32).to_float_vector(), values);
  };
  auto expect_ints = [&](const std::string& name, DType dtype, const Shape& shape,
                         const std::vector<int64_t>& values) {
    SCOPED_TRACE(name);
    auto t = load_npy(file(name));
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    EXPECT_EQ(t->dtype(), dtype);
    EXPECT_EQ(t->shape(), shape);
    EXPECT_EQ(t->to_int64_vector(), values);
  };

  std::vector<float> a(24);
  for (int i = 0; i < 24; ++i) a[size_t(i)] = float(i) * 0.5f - 3;
  expect_floats("f32.npy", DType::kFloat32, {2, 3, 4}, a);
  expect_floats("f16.npy", DType::kFloat16, {2, 3, 4}, a);  // all exact in half
  std::vector<int64_t> i8(24), u8(24), i32(24), i64(5), b(7);
  for (int i = 0; i < 24; ++i) {
    i8[size_t(i)] = i - 12;
    u8[size_t(i)] = 200 + i;
    i32[size_t(i)] = int64_t(i) * -100000 + 7;
  }
  for (int i = 0; i < 5; ++i) i64[size_t(i)] = int64_t(i) * 1000000000000LL + 1;
  for (int i = 0; i < 7; ++i) b[size_t(i)] = i % 3 == 0;
  expect_ints("i8.npy", DType::kInt8, {4, 6}, i8);
  expect_ints("u8.npy", DType::kUInt8, {24}, u8);
  expect_ints("i32.npy", DType::kInt32, {6, 4}, i32);
  expect_ints("i64.npy", DType::kInt64, {5}, i64);
  expect_ints("bool.npy", DType::kBool, {7}, b);
  expect_floats("scalar.npy", DType::kFloat32, {}, {2.5f});
  expect_floats("empty.npy", DType::kFloat32, {0, 3}, {});
  expect_floats("be_f4.npy", DType::kFloat32, {2, 3}, {-2.0f, -0.75f, 0.5f, 1.75f, 3.0f, 4.25f});
  expect_ints("be_i8.npy", DType::kInt64, {4}, {1, -2, -5, -8});
  expect_floats("v2.npy", DType::kFloat32, {3}, {0.25f, 1.25f, 2.25f});

  EXPECT_TRUE(status_is(load_npy(file("f64.npy")), StatusCode::kUnsupported,
                        {file("f64.npy"), "astype(numpy.float32)"}));
  EXPECT_TRUE(status_is(load_npy(file("fortran.npy")), StatusCode::kUnsupported,
                        {file("fortran.npy"), "Fortran"}));

  auto plain = load_npz(file("plain.npz"));
  ASSERT_TRUE(plain.ok()) << plain.status().to_string();
  ASSERT_EQ(plain->size(), 2u);
  EXPECT_EQ((*plain)[0].first, "first");
  EXPECT_EQ((*plain)[0].second.to_float_vector(), a);
  EXPECT_EQ((*plain)[1].first, "second");
  EXPECT_EQ((*plain)[1].second.to_int64_vector(), (std::vector<int64_t>{-2, -1, 0, 1, 2}));

  auto packed = load_npz(file("packed.npz"));
  ASSERT_TRUE(packed.ok()) << packed.status().to_string();
  ASSERT_EQ(packed->size(), 1u);
  EXPECT_EQ((*packed)[0].first, "big");
  const Tensor& big = (*packed)[0].second;
  ASSERT_EQ(big.shape(), (Shape{1000}));
  for (int i = 0; i < 1000; i += 97) EXPECT_EQ(big.data<float>()[i], float(i) * 0.001f + 1) << i;

  EXPECT_TRUE(status_is(load_npz(file("text.npz")), StatusCode::kParseError,
                        {file("text.npz"), "notes.txt", "not an NPY file"}));
}

TEST_F(NumpyFiles, NumpyReadsWhatMixqWrites) {
  uint64_t seed = 100;
  NamedTensors written;
  for (DType dtype : kNpyDTypes) {
    for (const Shape& shape : kShapes) {
      std::string name = std::string(dtype_name(dtype)) + "_" + std::to_string(written.size());
      written.emplace_back(name, random_of(dtype, shape, seed++));
      ASSERT_TRUE(save_npy(file(name + ".npy"), written.back().second).ok());
    }
  }
  ASSERT_TRUE(save_npz(file("ours.npz"), written).ok());
  ASSERT_TRUE(save_npz(file("nothing.npz"), {}).ok());
  // NumPy loads every file (and the archive) and writes each array back as <name>_py.npy.
  ASSERT_NO_FATAL_FAILURE(python(R"(
import os
names = [f[:-4] for f in os.listdir(d) if f.endswith('.npy')]
assert np.load(d + '/nothing.npz').files == []
z = np.load(d + '/ours.npz')
assert sorted(z.files) == sorted(names), (z.files, names)
for n in names:
    a = np.load(d + '/' + n + '.npy')
    assert a.flags['C_CONTIGUOUS']
    assert np.array_equal(a, z[n]), n
    np.save(d + '/' + n + '_py.npy', a)
)"));
  for (const auto& [name, t] : written) {
    SCOPED_TRACE(name);
    auto back = load_npy(file(name + "_py.npy"));
    ASSERT_TRUE(back.ok()) << back.status().to_string();
    EXPECT_EQ(back->dtype(), t.dtype());
    EXPECT_EQ(back->shape(), t.shape());
    EXPECT_TRUE(same_bytes(*back, t));
  }
}

}  // namespace
}  // namespace mixq
