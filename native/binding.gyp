{
  "targets": [
    {
      "target_name": "tunio",
      "sources": ["tunio.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
