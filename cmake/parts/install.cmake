# install + package (issue 17): `cmake --install` and a .deb through CPack.
#   cmake --install build [--prefix DIR]       (or DESTDIR=... cmake --install build)
#   cd build && cpack -G DEB                   (configure with -DCMAKE_INSTALL_PREFIX=/usr)
# Layout under the prefix: bin/chatd, share/chatd/web, lib/systemd/system/chatd.service,
# share/doc/chatd; the policy and the settings go to /etc/chatd when the prefix is
# /usr (as GNUInstallDirs does), else to <prefix>/etc/chatd. chatd finds the
# scripts and the web client from its own location (core/main.c), the unit also
# sets them.
include(GNUInstallDirs)
if(CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  set(CHATD_ETC_DEST /etc/chatd)
else()
  set(CHATD_ETC_DEST ${CMAKE_INSTALL_SYSCONFDIR}/chatd)
endif()
set(CHATD_BINDIR ${CMAKE_INSTALL_FULL_BINDIR})
set(CHATD_ETCDIR ${CMAKE_INSTALL_FULL_SYSCONFDIR}/chatd)
set(CHATD_WEBDIR ${CMAKE_INSTALL_FULL_DATADIR}/chatd/web)
set(CHATD_DOCDIR ${CMAKE_INSTALL_FULL_DOCDIR})
configure_file(deploy/systemd/chatd.service.in ${CMAKE_BINARY_DIR}/chatd.service @ONLY)

install(TARGETS chatd RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY scripts/ DESTINATION ${CHATD_ETC_DEST}/scripts FILES_MATCHING PATTERN "*.lua")
install(FILES deploy/systemd/chatd.env DESTINATION ${CHATD_ETC_DEST}
        PERMISSIONS OWNER_READ OWNER_WRITE)
install(DIRECTORY web/ DESTINATION ${CMAKE_INSTALL_DATADIR}/chatd/web)
install(FILES ${CMAKE_BINARY_DIR}/chatd.service DESTINATION lib/systemd/system)
install(FILES README.md docs/operations.md docs/design-notes.md docs/architecture.md
              docs/metrics.md docs/slo.md docs/scripting.md docs/client.md
        DESTINATION ${CMAKE_INSTALL_DOCDIR} OPTIONAL)
install(DIRECTORY deploy/nginx deploy/grafana deploy/k8s USE_SOURCE_PERMISSIONS
        DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples)
install(FILES deploy/prometheus.yml deploy/alerts.yml deploy/docker-compose.yml
        DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples)

# .deb: runtime dependencies from the binary's shared libraries (dpkg-shlibdeps),
# the policy and the settings file as conffiles (kept on upgrade).
set(CPACK_PACKAGE_NAME chatd)
set(CPACK_PACKAGE_VERSION 0.2.0)
set(CPACK_PACKAGE_CONTACT "chatd maintainers <chatd@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "realtime chat server (WebSocket, Redis fan-out, Postgres history, Lua policy)")
set(CPACK_PACKAGE_FILE_NAME chatd_${CPACK_PACKAGE_VERSION}_amd64)
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGING_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
set(CPACK_SET_DESTDIR ON)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# loaded at start, not linked, so shlibdeps cannot see them, and chatd refuses to start without
# them: the policy sandbox's cjson.so (LuaJIT's C module path) and libwebsockets' libuv event
# library plugin (tests/deploy check_files.py runtime-libs reads a started chatd's mappings)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "lua-cjson, libwebsockets-evlib-uv")
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "redis-server, postgresql")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "nginx")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
if(CMAKE_INSTALL_PREFIX STREQUAL "/usr")   # conffiles are absolute /etc paths
  file(GLOB _chatd_lua RELATIVE ${CMAKE_SOURCE_DIR}/scripts ${CMAKE_SOURCE_DIR}/scripts/*.lua)
  set(CHATD_CONFFILES ${CMAKE_BINARY_DIR}/conffiles)
  file(WRITE ${CHATD_CONFFILES} "/etc/chatd/chatd.env\n")
  foreach(f ${_chatd_lua})
    file(APPEND ${CHATD_CONFFILES} "/etc/chatd/scripts/${f}\n")
  endforeach()
  set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${CHATD_CONFFILES})
endif()
include(CPack)
