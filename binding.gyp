{
  "variables": {
    "with_tpm%": "<!(node -p \"process.env.SPIFFE_EDGE_WITH_TPM === '0' ? 0 : 1\")"
  },
  "target_defaults": {
    "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
    "cflags_cc": [
      "-std=c++17", "-Wall", "-Wextra", "-Werror=format-security",
      "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2"
    ],
    "cflags_cc!": ["-fno-exceptions"],
    "ldflags": ["-Wl,-z,relro,-z,now"],
    "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"]
  },
  "targets": [
    {
      "target_name": "peercred",
      "sources": ["native/src/peercred.cc"]
    }
  ],
  "conditions": [
    ["with_tpm==1", {
      "targets": [
        {
          "target_name": "tpm_native",
          "sources": [
            "native/src/addon.cc",
            "native/src/esys_context.cc",
            "native/src/commands.cc",
            "native/src/policy.cc"
          ],
          "cflags_cc": ["<!@(pkg-config --cflags tss2-esys tss2-tctildr tss2-mu tss2-rc)"],
          "libraries": ["<!@(pkg-config --libs tss2-esys tss2-tctildr tss2-mu tss2-rc)"]
        }
      ]
    }]
  ]
}
