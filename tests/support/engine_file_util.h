// Editing engine files in tests: rewrite the metadata of a valid file the way another build of
// mixq (or another machine) would have written it, keeping the file itself consistent.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>

namespace mixq::testing {

// Header layout (engine_file.cpp): magic[8], version u32 @8, header size u32 @12, payload size
// u64 @16, FNV-1a 64 of the payload @24; payload: metadata length u64, JSON, 64-byte aligned blobs.
constexpr size_t kEngineHeader = 32;

inline uint64_t fnv1a(const char* p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) {
    h ^= uint8_t(p[i]);
    h *= 1099511628211ull;
  }
  return h;
}

// Rewrites the metadata JSON of a valid engine file and makes the file consistent again (blob
// area realigned, sizes and checksum recomputed).
inline std::string rewrite_metadata(const std::string& bytes,
                                    const std::function<void(nlohmann::json&)>& edit) {
  uint64_t len;
  std::memcpy(&len, bytes.data() + kEngineHeader, 8);
  size_t blob_start = 8 + len;
  while ((kEngineHeader + blob_start) % 64) ++blob_start;
  nlohmann::json meta = nlohmann::json::parse(bytes.substr(kEngineHeader + 8, len));
  edit(meta);
  const std::string text = meta.dump();
  std::string payload;
  const uint64_t new_len = text.size();
  payload.append(reinterpret_cast<const char*>(&new_len), 8);
  payload += text;
  while ((kEngineHeader + payload.size()) % 64) payload.push_back('\0');
  payload += bytes.substr(kEngineHeader + blob_start);
  std::string out = bytes.substr(0, kEngineHeader);
  const uint64_t size = payload.size(), sum = fnv1a(payload.data(), payload.size());
  std::memcpy(out.data() + 16, &size, 8);
  std::memcpy(out.data() + 24, &sum, 8);
  return out + payload;
}

}  // namespace mixq::testing
