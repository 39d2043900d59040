{{/*
The trainer pod, for pytorchjob.yaml (Master, Worker), trainingruntime.yaml (the chart's runtime)
and trainjob.yaml (its trainer block and, on a ClusterTrainingRuntime, its runtimePatches).
*/}}

{{/*
The trainer's arguments after the launcher: `python -m r1v_job ...` under torchrun. The
chart-owned recipe keys (r1v.recipeOwned) are passed here too, with the values written into the
recipe ConfigMap; everything else comes from the recipe.
*/}}
{{- define "r1v.trainer.args" -}}
- -m
- r1v_job
- --config
- /etc/r1v/recipe.yaml
- --output_dir
- {{ include "r1v.outputDir" . | quote }}
- --model_name_or_path
- {{ include "r1v.modelPath" . | quote }}
- --dataset_name
- {{ include "r1v.datasetPath" . | quote }}
{{- if ne .Values.trainer.deepspeed "none" }}
- --deepspeed
- /etc/r1v/{{ .Values.trainer.deepspeed }}.json
{{- end }}
- --metrics_port
- {{ .Values.monitoring.port | quote }}
- --metrics_addr
- {{ .Values.monitoring.bindAddress | quote }}
- --metrics_grace_seconds
- {{ include "r1v.metricsGraceSeconds" . | quote }}
{{- range .Values.trainer.extraArgs }}
{{- /* toString: `--set trainer.extraArgs={--max_steps,200}` gives the number 200. */}}
- {{ toString . | quote }}
{{- end }}
{{- end }}

{{/* files/launch.sh runs the checks, then torchrun with these arguments, and maps the exit codes. */}}
{{- define "r1v.trainer.command" -}}
- sh
- {{ include "r1v.scriptsDir" . }}/launch.sh
{{- end }}

{{/*
The install id keying the launcher's crash budget: trainer.installId, else the one the existing job
carries (helm upgrade keeps the budget), else a new one. Resolved once per render.
*/}}
{{- define "r1v.installId" -}}
{{- if not (hasKey .Values "resolvedInstallId") }}
{{- $apiVersion := ternary "kubeflow.org/v1" "trainer.kubeflow.org/v1alpha1" (eq .Values.jobKind "PyTorchJob") }}
{{- $job := lookup $apiVersion .Values.jobKind .Release.Namespace (include "r1v.jobName" .) | default dict }}
{{- $_ := set .Values "resolvedInstallId" (.Values.trainer.installId | default (dig "metadata" "annotations" "r1v.dev/install-id" "" $job) | default uuidv4) }}
{{- end }}
{{- .Values.resolvedInstallId }}
{{- end }}

{{/* The trainer container's environment (EnvVar objects). */}}
{{- define "r1v.trainer.env" -}}
- name: R1V_RUN
  value: {{ include "r1v.runName" . | quote }}
{{ include "r1v.podNamespaceEnv" . }}
{{ include "r1v.hfEnv" . }}
{{ include "r1v.tmpEnv" . }}
# Read by files/launch.sh.
- name: R1V_MODEL_PATH
  value: {{ include "r1v.modelPath" . | quote }}
- name: R1V_DATASET_PATH
  value: {{ include "r1v.datasetPath" . | quote }}
# The recipe keys the chart sets and their values: the trainer refuses a recipe (recipe.existingConfigMap)
# that sets one of them otherwise, naming both, before any model loads.
- name: R1V_CHART_KEYS
  value: {{ include "r1v.recipeOwned" . | quote }}
- name: R1V_CLAIM
  value: {{ include "r1v.claimName" . | quote }}
- name: R1V_PREFLIGHT
  value: {{ ternary "1" "0" .Values.trainer.preflight | quote }}
# SIGTERM to SIGKILL, less 15 s for torchrun and the launcher: the trainer's deadline for its save.
# A ClusterTrainingRuntime's pods keep Kubernetes' 30 s (runtimePatches cannot set the period).
- name: R1V_GRACE_SECONDS
  value: {{ sub (ternary 30 (int .Values.trainer.terminationGracePeriodSeconds) (eq (include "r1v.clusterRuntime" .) "true")) 15 | quote }}
{{- if and (eq .Values.trainer.restartPolicy "ExitCode") (or (eq .Values.jobKind "PyTorchJob") (ne (include "r1v.clusterRuntime" .) "true")) }}
{{- /* The restart budget by cause, per checkpoint (files/launch.sh): the Training Operator keeps
none under ExitCode, and the chart's TrainingRuntime leaves every retryable exit to it. */}}
- name: R1V_MAX_RESTARTS
  value: {{ .Values.runPolicy.backoffLimit | quote }}
- name: R1V_OUTPUT_DIR
  value: {{ include "r1v.outputDir" . | quote }}
- name: R1V_INSTALL_ID
  value: {{ include "r1v.installId" . | quote }}
{{- if eq .Values.jobKind "PyTorchJob" }}
{{- /* The operator recreates a pod under its name; a TrainJob's pods are keyed by node rank. */}}
- name: R1V_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}
{{- end }}
{{- if .Values.dataPrep.enabled }}
- name: R1V_DATA_MARKER
  value: {{ include "r1v.dataPrepMarker" . | quote }}
- name: R1V_DATA_WAIT_TIMEOUT
  value: {{ .Values.dataPrep.waitTimeoutSeconds | quote }}
{{- end }}
{{- range $name, $value := .Values.trainer.nccl }}
- name: {{ $name | quote }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- range $name, $value := .Values.trainer.env }}
- name: {{ $name | quote }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- with .Values.trainer.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* GPUs per pod, requests = limits. */}}
{{- define "r1v.trainer.resources" -}}
requests:
  {{- with omit (.Values.trainer.resources.requests | default dict) "nvidia.com/gpu" }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  nvidia.com/gpu: {{ .Values.gpusPerNode }}
limits:
  {{- with omit (.Values.trainer.resources.limits | default dict) "nvidia.com/gpu" }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  nvidia.com/gpu: {{ .Values.gpusPerNode }}
{{- end }}

{{- define "r1v.trainer.volumeMounts" -}}
- name: data
  mountPath: {{ include "r1v.dataRoot" . | quote }}
- name: recipe
  mountPath: /etc/r1v
  readOnly: true
- name: scripts
  mountPath: {{ include "r1v.scriptsDir" . | quote }}
  readOnly: true
- name: dshm
  mountPath: /dev/shm
{{ include "r1v.tmpMount" . }}
{{- with .Values.trainer.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "r1v.trainer.volumes" -}}
{{ include "r1v.dataVolume" . }}
{{ include "r1v.recipeVolume" . }}
{{ include "r1v.scriptsVolume" . }}
# NCCL and DataLoader workers exchange tensors through /dev/shm; the runtime's 64 MiB default is far too small.
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.trainer.shmSize | quote }}
{{ include "r1v.tmpVolume" . }}
{{- with .Values.trainer.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod template metadata: the chart's selector labels (monitors select on them) and the user's. */}}
{{- define "r1v.trainer.podMetadata" -}}
labels:
  {{- include "r1v.selectorLabels" . | nindent 2 }}
  app.kubernetes.io/component: trainer
  {{- with .Values.trainer.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .Values.trainer.podAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Scheduling fields a ClusterTrainingRuntime's runtimePatches can carry too. */}}
{{- define "r1v.trainer.scheduling" -}}
{{- $v := .Values.trainer }}
{{- $selector := deepCopy $v.nodeSelector }}
{{- with $v.gpuProduct }}
{{- $_ := set $selector "nvidia.com/gpu.product" . }}
{{- end }}
{{- with $selector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
One trainer pod template. Called with (dict "root" $ "role" "master"|"worker"|"node").
PyTorchJob's Master and Worker differ only in the metrics port (rank 0, on the master, alone serves
/metrics); the TrainingRuntime's "node" pods declare it on every pod (the rank-0 one serves it).
*/}}
{{- define "r1v.trainer.podTemplate" -}}
{{- $root := .root }}
{{- $v := $root.Values -}}
metadata:
  {{- include "r1v.trainer.podMetadata" $root | nindent 2 }}
spec:
  {{- with include "r1v.trainerServiceAccount" $root }}
  serviceAccountName: {{ . | quote }}
  {{- end }}
  # The trainer never talks to the API server unless trainer.serviceAccount says so.
  automountServiceAccountToken: {{ $v.trainer.serviceAccount.automountServiceAccountToken }}
  {{- if eq .role "node" }}
  # The node Job replaces a failed pod, or JobSet restarts the whole set; see trainingruntime.yaml.
  restartPolicy: Never
  {{- end }}
  {{- with include "r1v.imagePullSecrets" $root | trim }}
  {{- . | nindent 2 }}
  {{- end }}
  securityContext:
    {{- include "r1v.podSecurityContext" (dict "root" $root "component" $v.trainer) | nindent 4 }}
  # SIGTERM to SIGKILL: one step plus one checkpoint save (values.yaml has the figures).
  terminationGracePeriodSeconds: {{ $v.trainer.terminationGracePeriodSeconds }}
  {{- if and $v.gangScheduling.enabled $v.gangScheduling.schedulerName (ne .role "node") }}
  schedulerName: {{ $v.gangScheduling.schedulerName | quote }}
  {{- end }}
  {{- with $v.trainer.priorityClassName }}
  priorityClassName: {{ . | quote }}
  {{- end }}
  {{- with $v.trainer.runtimeClassName }}
  runtimeClassName: {{ . | quote }}
  {{- end }}
  {{- if $v.trainer.hostNetwork }}
  hostNetwork: true
  # Cluster DNS (the operator's master Service names) still resolves on the host network.
  dnsPolicy: ClusterFirstWithHostNet
  {{- end }}
  {{- with include "r1v.trainer.scheduling" $root | trim }}
  {{- . | nindent 2 }}
  {{- end }}
  {{- with $v.trainer.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    # PyTorchJob: the operator requires a container named "pytorch" and injects PET_* (read by
    # torchrun) and MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK into it. TrainJob: the Trainer's torch
    # plugin injects PET_* into the container named "node" of the replicated job "node".
    - name: {{ include "r1v.trainerContainer" $root | quote }}
      image: {{ include "r1v.trainerImage" $root | quote }}
      imagePullPolicy: {{ $v.image.trainer.pullPolicy }}
      {{- if ne .role "node" }}
      command:
        {{- include "r1v.trainer.command" $root | nindent 8 }}
      args:
        {{- include "r1v.trainer.args" $root | nindent 8 }}
      env:
        {{- include "r1v.trainer.env" $root | nindent 8 }}
      {{- end }}
      {{- with $v.trainer.extraEnvFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        {{- if ne .role "node" }}
        # Declared so the stored object matches what the operator's defaulter would add.
        - name: pytorchjob-port
          containerPort: {{ $v.trainer.masterPort }}
          protocol: TCP
        {{- end }}
        {{- if ne .role "worker" }}
        - name: metrics
          containerPort: {{ $v.monitoring.port }}
          protocol: TCP
        {{- end }}
      securityContext:
        {{- include "r1v.securityContext" (dict "root" $root "component" $v.trainer) | nindent 8 }}
      {{- if ne .role "node" }}
      resources:
        {{- include "r1v.trainer.resources" $root | nindent 8 }}
      {{- end }}
      volumeMounts:
        {{- include "r1v.trainer.volumeMounts" $root | nindent 8 }}
  volumes:
    {{- include "r1v.trainer.volumes" $root | nindent 4 }}
{{- end }}

{{/*
Values a ClusterTrainingRuntime's pods cannot take: Trainer v2.3's runtimePatches carry only
metadata, volumes, mounts, env, securityContexts, serviceAccountName, imagePullSecrets,
nodeSelector, affinity and tolerations. Fails the render naming the first such value.
*/}}
{{- define "r1v.trainer.checkClusterRuntime" -}}
{{- $v := .Values }}
{{- $unpatchable := dict
  "trainer.priorityClassName" $v.trainer.priorityClassName
  "trainer.runtimeClassName" $v.trainer.runtimeClassName
  "trainer.hostNetwork" $v.trainer.hostNetwork
  "trainer.topologySpreadConstraints" $v.trainer.topologySpreadConstraints
  "trainer.extraEnvFrom" $v.trainer.extraEnvFrom
  "gangScheduling.enabled" $v.gangScheduling.enabled
  "runPolicy.ttlSecondsAfterFinished" (not (kindIs "invalid" $v.runPolicy.ttlSecondsAfterFinished)) }}
{{- range $key := keys $unpatchable | sortAlpha }}
{{- if get $unpatchable $key }}
{{- fail (printf "%s is set, but trainJob.clusterTrainingRuntime=%s: Trainer v2.3 cannot patch it into a ClusterTrainingRuntime's pods; unset it, or leave trainJob.clusterTrainingRuntime empty to use the chart's TrainingRuntime" $key $v.trainJob.clusterTrainingRuntime) }}
{{- end }}
{{- end }}
{{- end }}
